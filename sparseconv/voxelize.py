"""Points to voxels and back. The C++ operator finds the unique voxels in O(P); features are reduced with
torch's scatter operations, so gradients flow to the point features."""
import torch

from . import ops  # noqa: F401  (operator registrations)
from .tensor import SparseTensor, _check_device

_REDUCE = ("mean", "sum", "max")


def _per_axis(value, name):
    if isinstance(value, (int, float)):
        value = (float(value),) * 3
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise TypeError(f"{name}: expected a number or 3 numbers, got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name}: expected a number or 3 numbers, got {len(out)} values")
    return out


def voxelize(points, feats=None, voxel_size=1.0, origin=None, reduce="mean"):
    """points [P, 3] -> (SparseTensor of the occupied voxels, point_to_voxel int64 [P]).

    A point falls into voxel floor((p - origin) / voxel_size) (computed in float64); origin defaults to the
    points' per-axis minimum. Voxels come out unique and sorted by (x, y, z), batch index 0. Voxel features
    reduce the points' `feats` [P, F] by "mean", "sum" or "max"; with feats=None every voxel gets a 1
    (occupancy), in the points' dtype.
    """
    if reduce not in _REDUCE:
        raise ValueError(f"reduce: expected one of {_REDUCE}, got {reduce!r}")
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points: expected a torch.Tensor [P, 3], got {type(points).__name__}")
    _check_device(points, "points")
    voxel_size = _per_axis(voxel_size, "voxel_size")
    if origin is None:
        if points.dim() == 2 and points.shape[0] and points.is_floating_point():
            origin = points.double().amin(0).tolist()
        else:
            origin = (0.0, 0.0, 0.0)
    origin = _per_axis(origin, "origin")
    coords, p2v = torch.ops.sparseconv.voxelize(points, list(voxel_size), list(origin))
    n_vox = coords.shape[0]
    if feats is None:
        values = points.new_ones(n_vox, 1)
    else:
        if not isinstance(feats, torch.Tensor) or not feats.is_floating_point():
            raise TypeError("feats: expected a floating-point tensor [P, F] or None")
        if feats.dim() != 2 or feats.shape[0] != points.shape[0]:
            raise ValueError(f"feats: expected shape [{points.shape[0]}, F], got {tuple(feats.shape)}")
        values = _reduce(feats, p2v, n_vox, reduce)
    spatial_shape = tuple(int(v) + 1 for v in coords[:, 1:].amax(0)) if n_vox else (1, 1, 1)
    return SparseTensor(values, coords, spatial_shape, 1), p2v


def _reduce(feats, p2v, n_vox, reduce):
    out = feats.new_zeros(n_vox, feats.shape[1])
    if reduce == "max":
        index = p2v[:, None].expand_as(feats)
        return out.scatter_reduce(0, index, feats, "amax", include_self=False)
    out = out.index_add(0, p2v, feats)
    if reduce == "mean":
        count = torch.bincount(p2v, minlength=n_vox).to(feats.dtype)
        out = out / count[:, None]
    return out


def devoxelize(voxel_values, point_to_voxel):
    """Each point gets its voxel's row: voxel_values [V, C] -> [P, C]; differentiable."""
    if not isinstance(voxel_values, torch.Tensor) or voxel_values.dim() != 2:
        raise ValueError(f"voxel_values: expected a tensor [V, C], got {getattr(voxel_values, 'shape', None)}")
    if not isinstance(point_to_voxel, torch.Tensor) or point_to_voxel.dtype != torch.int64:
        raise TypeError("point_to_voxel: expected the int64 index that voxelize returned")
    if point_to_voxel.dim() != 1:
        raise ValueError(f"point_to_voxel: expected shape [P], got {tuple(point_to_voxel.shape)}")
    if point_to_voxel.numel():
        lo, hi = int(point_to_voxel.min()), int(point_to_voxel.max())
        if lo < 0 or hi >= voxel_values.shape[0]:
            raise ValueError(f"point_to_voxel: values must lie in [0, {voxel_values.shape[0]}), got [{lo}, {hi}]")
    return voxel_values.index_select(0, point_to_voxel)
