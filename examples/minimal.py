"""The smallest end-to-end run: voxelize a generated LiDAR-like scene, run a few sparse layers forward and
backward, and check one layer against torch's dense conv3d on the densified input."""
import time

import torch
import torch.nn.functional as F

import sparseconv
from sparseconv.data import lidar_scene
from sparseconv.nn import SparseConv3d, SparseInverseConv3d, SubMConv3d


def main():
    info = sparseconv.build_info()
    print(f"sparseconv {info['version']} (torch {info['torch']}, {info['openmp_threads']} OpenMP threads, "
          f"CUDA {'yes' if info['cuda'] else 'no'}, {info['simd']})")
    torch.manual_seed(0)
    points, _labels = lidar_scene(20_000, voxel_size=0.1, seed=0)
    points = torch.from_numpy(points)
    # Voxel features: occupancy and mean height above the lowest point.
    feats = torch.cat([torch.ones(len(points), 1), points[:, 2:3] - points[:, 2].min()], 1)
    x, _ = sparseconv.voxelize(points, feats, voxel_size=0.1)
    print(f"scene: {x.coords.shape[0]} voxels in a {x.spatial_shape} grid "
          f"({x.coords.shape[0] / torch.tensor(x.spatial_shape).prod().item():.4%} occupied)")

    net = torch.nn.ModuleList([
        SubMConv3d(x.feats.shape[1], 16, 3, indice_key="s0"),
        SparseConv3d(16, 32, 2, stride=2, indice_key="down"),
        SubMConv3d(32, 32, 3, indice_key="s1"),
        SparseInverseConv3d(32, 8, 2, indice_key="down"),
    ])
    t0 = time.perf_counter()
    h = x
    for layer in net:
        h = layer(h)
        h = h.replace(torch.relu(h.feats))
        print(f"  {type(layer).__name__:20s} -> {h.coords.shape[0]:6d} sites, {h.feats.shape[1]} channels, "
              f"shape {h.spatial_shape}")
    h.feats.square().mean().backward()
    print(f"forward + backward: {1e3 * (time.perf_counter() - t0):.1f} ms")

    # The sparse result equals torch's dense convolution at the active sites.
    small_points, _ = lidar_scene(2_000, voxel_size=0.4, seed=1)
    small, _ = sparseconv.voxelize(torch.from_numpy(small_points).double(), None, voxel_size=0.4)
    conv = SubMConv3d(small.feats.shape[1], 4, 3).to(torch.float64)
    out = conv(small)
    w = conv.weight.permute(4, 3, 0, 1, 2)
    ref = F.conv3d(small.dense(), w, conv.bias, padding=1)
    c = out.coords.long()
    err = (ref[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] - out.feats).abs().max().item()
    print(f"max |sparse - dense conv3d| at {c.shape[0]} active sites: {err:.2e}")
    assert err < 1e-9


if __name__ == "__main__":
    main()
