"""sparseconv.spconv against the real spconv 2.3.8 (CPU wheel): the same model code, built once from
`spconv.pytorch` and once from `sparseconv.spconv.pytorch`, spconv's state_dict loaded into ours with strict=True
(through a checkpoint file), outputs and gradients of the inputs and of every parameter compared in float32 on a
LiDAR-like scene, in train and eval mode; then single layers. Skips when spconv is not importable
(`pip install spconv==2.3.8`).

spconv runs on one thread: its multi-threaded CPU scatter-add races (benchmarks/peers.py). Agreement is measured
as max |ours - spconv| / max |spconv| per tensor (an element-wise ratio is meaningless where values cancel to ~0).
"""
import contextlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sparseconv
import sparseconv.spconv.pytorch as ours_spconv
from sparseconv.data import lidar_scene

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402  (the CPU-only patch and the serial scatter for spconv)

pytest.importorskip("spconv")
real_spconv = peers.load_spconv()
if real_spconv is None:
    pytest.skip(f"spconv does not import: {peers.spconv_error()}", allow_module_level=True)

TOL = 1e-5
SHAPE = [96, 96, 8]  # voxel grid of the scene (0.3 m voxels, a 28.8 m square, 2.4 m high)


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with peers.serial_scatter():
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


class Backbone(nn.Module):
    """Written the way OpenPCDet / CenterPoint backbones are: only `spconv` (the module passed in) changes."""

    def __init__(self, spconv, cin=4, classes=5):
        super().__init__()

        def block(conv, c):
            return spconv.SparseSequential(conv, nn.BatchNorm1d(c, eps=1e-3, momentum=0.01), nn.ReLU())

        self.conv_input = block(spconv.SubMConv3d(cin, 16, 3, padding=1, bias=False, indice_key="subm1"), 16)
        self.res = block(spconv.SubMConv3d(16, 16, 3, padding=1, bias=False, indice_key="subm1"), 16)
        self.down = block(spconv.SparseConv3d(16, 32, 3, stride=2, padding=1, bias=False, indice_key="spconv2"), 32)
        self.conv2 = block(spconv.SubMConv3d(32, 32, 3, padding=1, bias=False, indice_key="subm2"), 32)
        self.up = block(spconv.SparseInverseConv3d(32, 16, 3, indice_key="spconv2", bias=False), 16)
        # 1x1: spconv's weight.view(Cin, Cout). The only bias here: spconv's CPU kernels refuse a bias in eval
        # mode except on this 1x1 path (biased layers are compared in train mode below).
        self.point_head = spconv.SubMConv3d(32, 8, 1, bias=True)
        self.pool = spconv.SparseMaxPool3d(2, 2)
        self.out = spconv.SparseSequential(
            spconv.SparseConv3d(8, 8, 3, stride=2, padding=1, bias=False, indice_key="spconv4"),
            spconv.SparseBatchNorm(8), spconv.SparseReLU(), spconv.ToDense())
        self.head = nn.Linear(8 * 24 * 24 * 2, classes)

    def forward(self, x):
        x = self.conv_input(x)
        x = x.replace_feature(self.res(x).features + x.features)  # a residual, as in SparseBasicBlock
        skip = x
        x = self.conv2(self.down(x))
        x = self.up(x)
        x = x.replace_feature(torch.cat([x.features, skip.features], 1))
        x = self.point_head(x)
        x = self.pool(x.replace_feature(torch.relu(x.features)))
        dense = self.out(x)
        return dense, self.head(dense.flatten(1))


def scene(seed, batch=2):
    """Two LiDAR-like street scenes at 0.3 m voxels, cropped to SHAPE: features (x, y, z offsets, occupancy)."""
    coords, feats = [], []
    for b in range(batch):
        points = torch.from_numpy(lidar_scene(4000, 0.3, seed=seed + b)[0])
        points = points - points.amin(0)
        x, _ = sparseconv.voxelize(points, points, voxel_size=0.3, origin=(0.0, 0.0, 0.0))
        keep = (x.coords[:, 1:] < torch.tensor(SHAPE, dtype=torch.int32)).all(1)
        c = x.coords[keep].clone()
        c[:, 0] = b
        f = x.feats[keep] / torch.tensor([28.8, 28.8, 2.4])
        coords.append(c)
        feats.append(torch.cat([f, torch.ones(f.shape[0], 1)], 1))
    return torch.cat(feats).float(), torch.cat(coords)


def run(model, spconv, feats, coords):
    leaf = feats.clone().requires_grad_(True)
    x = spconv.SparseConvTensor(features=leaf, indices=coords, spatial_shape=SHAPE, batch_size=2)
    dense, logits = model(x)
    g = torch.Generator().manual_seed(7)
    (dense * torch.randn(dense.shape, generator=g)).sum().backward(retain_graph=True)
    (logits * torch.randn(logits.shape, generator=g)).sum().backward()
    return dense.detach(), logits.detach(), leaf.grad


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    theirs = Backbone(real_spconv)
    torch.manual_seed(0)
    mine = Backbone(ours_spconv)
    # Same seed, same initial weights: our layers draw their parameters as spconv's do.
    for (name, a), b in zip(theirs.state_dict().items(), mine.state_dict().values()):
        assert a.shape == b.shape and torch.equal(a, b), name
    # spconv trains a little (running statistics move), is saved, and the checkpoint loads into ours unchanged.
    feats, coords = scene(seed=10)
    opt = torch.optim.SGD(theirs.parameters(), lr=0.05)
    with one_thread():
        for _ in range(2):
            opt.zero_grad()
            run(theirs, real_spconv, feats, coords)
            opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "spconv_backbone.pth"
    torch.save(theirs.state_dict(), path)
    mine.load_state_dict(torch.load(path), strict=True)
    return theirs, mine


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backbone_matches_spconv(models, mode):
    theirs, mine = models
    feats, coords = scene(seed=1)
    figures = {}
    for m in (theirs, mine):
        m.train(mode == "train")
        m.zero_grad()
    ref = run(theirs, real_spconv, feats, coords)
    got = run(mine, ours_spconv, feats, coords)
    for name, a, b in zip(("dense output", "logits", "input gradient"), got, ref):
        assert a.shape == b.shape, name
        figures[name] = rel(a, b)
    for (name, p), q in zip(theirs.named_parameters(), mine.parameters()):
        assert q.grad is not None and q.grad.shape == p.grad.shape, name
        figures[f"grad {name}"] = rel(q.grad, p.grad)
    if mode == "train":  # the batch norms' running statistics moved the same way
        for (name, a), b in zip(theirs.state_dict().items(), mine.state_dict().values()):
            if a.is_floating_point():
                figures[f"state {name}"] = rel(b, a)
    worst = max(figures, key=figures.get)
    print(f"\n{mode}: {len(coords)} voxels, {len(figures)} tensors compared, worst {worst}: {figures[worst]:.2e}; "
          f"logits {figures['logits']:.2e}, input gradient {figures['input gradient']:.2e}")
    assert figures[worst] <= TOL, figures


# Single layers and short chains, biased, train mode (spconv's CPU kernels take a bias only there), in 3D and 2D.
LAYERS = {
    "subm k3": lambda sp: sp.SubMConv3d(3, 5, 3, padding=1, indice_key="a"),
    "subm k(3,1,5) d2": lambda sp: sp.SubMConv3d(3, 5, (3, 1, 5), dilation=2),
    "subm 1x1": lambda sp: sp.SubMConv3d(3, 5, 1),
    "conv k3 s2 p1": lambda sp: sp.SparseConv3d(3, 5, 3, stride=2, padding=1),
    "conv k2 s2": lambda sp: sp.SparseConv3d(3, 5, 2, stride=2),
    "conv k3 s(2,1,3) p(1,0,2) d(1,2,1)": lambda sp: sp.SparseConv3d(3, 5, 3, (2, 1, 3), (1, 0, 2), (1, 2, 1)),
    "conv 1x1 s1": lambda sp: sp.SparseConv3d(3, 5, 1),
    "conv 1x1 s2": lambda sp: sp.SparseConv3d(3, 5, 1, stride=2),
    "transpose k3 s2 p1": lambda sp: sp.SparseConvTranspose3d(3, 5, 3, stride=2, padding=1),
    "transpose k2 s2": lambda sp: sp.SparseConvTranspose3d(3, 5, 2, stride=2),
    "transpose 1x1": lambda sp: sp.SparseConvTranspose3d(3, 5, 1),
    "conv + inverse k3 s2 p1": lambda sp: sp.SparseSequential(
        sp.SparseConv3d(3, 4, 3, 2, 1, indice_key="d"), sp.SparseInverseConv3d(4, 5, 3, indice_key="d")),
    "conv + inverse k2 s2": lambda sp: sp.SparseSequential(
        sp.SparseConv3d(3, 4, 2, 2, indice_key="d"), sp.SparseInverseConv3d(4, 5, 2, indice_key="d")),
    "maxpool k3 s2 p1": lambda sp: sp.SparseMaxPool3d(3, 2, 1),
    "maxpool + inverse": lambda sp: sp.SparseSequential(
        sp.SparseMaxPool3d(2, 2, indice_key="p"), sp.SparseInverseConv3d(3, 5, 2, indice_key="p")),
    "2D subm k3": lambda sp: sp.SubMConv2d(3, 5, 3, padding=1),
    "2D conv k3 s2 p1": lambda sp: sp.SparseConv2d(3, 5, 3, stride=2, padding=1),
    "2D transpose k3 s2": lambda sp: sp.SparseConvTranspose2d(3, 5, 3, stride=2),
    "2D conv + inverse": lambda sp: sp.SparseSequential(
        sp.SparseConv2d(3, 4, 3, 2, 1, indice_key="d"), sp.SparseInverseConv2d(4, 5, 3, indice_key="d")),
    "2D maxpool k2": lambda sp: sp.SparseMaxPool2d(2),
}


def small_input(spconv, ndim, seed):
    g = torch.Generator().manual_seed(seed)
    shape = [9, 8, 7][:ndim]
    cells = torch.randperm(2 * 9 * 8 * 7 // (7 if ndim == 2 else 1), generator=g)[:150]
    idx = []
    for size in reversed(shape):
        idx.append(cells % size)
        cells = cells // size
    coords = torch.stack([cells] + idx[::-1], 1).int()
    # Positive features: spconv's CPU max pool starts at 0 (see sparseconv/spconv/pool.py).
    feats = (torch.rand(coords.shape[0], 3, generator=g) + 0.1).requires_grad_(True)
    return spconv.SparseConvTensor(feats, coords, shape, 2), feats


@pytest.mark.parametrize("case", list(LAYERS))
def test_layer_matches_spconv(case):
    ndim = 2 if case.startswith("2D") else 3
    outs = []
    for sp in (real_spconv, ours_spconv):
        torch.manual_seed(1)
        layer = LAYERS[case](sp)
        if outs:
            layer.load_state_dict(outs[0][0].state_dict(), strict=True)
        x, feats = small_input(sp, ndim, seed=len(case))
        y = layer(x)
        dense = y.dense()
        dense.backward(torch.randn(dense.shape, generator=torch.Generator().manual_seed(3)))
        outs.append((layer, y, dense, feats.grad))
    (theirs, y_ref, d_ref, g_ref), (mine, y, d, g) = outs
    assert y.spatial_shape == y_ref.spatial_shape and y.batch_size == y_ref.batch_size
    assert torch.equal(_rows(y.indices), _rows(y_ref.indices)), "output sites"
    if case.startswith(("conv + inverse", "maxpool + inverse", "2D conv + inverse")) or "subm" in case:
        assert torch.equal(y.indices, y_ref.indices), "same site order"
    figures = {"output": rel(d, d_ref), "input gradient": rel(g, g_ref)}
    for (name, p), q in zip(theirs.named_parameters(), mine.parameters()):
        figures[f"grad {name}"] = rel(q.grad, p.grad)
    assert max(figures.values()) <= TOL, figures


def _rows(indices):
    return torch.unique(indices.long(), dim=0)


def test_cpu_max_pool_differs_only_below_zero():
    """What sparseconv/spconv/pool.py documents: spconv's CPU max pool starts every output at 0, so on negative
    features it gives max(0, ours); sparseconv keeps the max over the active inputs (spconv's CUDA default)."""
    outs = []
    for sp in (real_spconv, ours_spconv):
        x, _ = small_input(sp, 3, seed=5)
        outs.append(sp.SparseMaxPool3d(3, 2, 1)(x.replace_feature(-x.features)).dense().detach())
    theirs, mine = outs
    assert (mine < 0).any()
    torch.testing.assert_close(theirs, mine.clamp_min(0), rtol=0, atol=0)
