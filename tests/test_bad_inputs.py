"""Bad input raises ValueError / TypeError naming the argument, never a crash; N = 0 works; NaN propagates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparseconv
from conftest import make_sparse, occupancy, random_coords, random_feats, set_params
from sparseconv import SparseTensor
from sparseconv.nn import SparseConv3d, SparseInverseConv3d, SubMConv3d

f64 = torch.float64
ERR = (ValueError, TypeError)


def _raises(names, fn):
    """fn() must raise ValueError/TypeError whose message mentions one of `names`."""
    with pytest.raises(ERR) as info:
        fn()
    msg = str(info.value)
    assert any(n in msg for n in names), f"message does not name any of {names}: {msg!r}"


def _build_and_conv(feats, coords, layer=None, **kw):
    """Construct a SparseTensor and run a conv on it (a check may live in either place)."""
    x = SparseTensor(feats, coords, **kw)
    if layer is None:
        cin = feats.shape[-1] if feats.dim() >= 1 else 1
        layer = SubMConv3d(cin, 2, 3)
        if feats.is_floating_point():
            layer = layer.to(feats.dtype)
    return layer(x)


def _good(n=10, c=3):
    coords = random_coords(2, 6, n=n, seed=1)
    return random_feats(n, c, torch.float32, seed=1), coords


# ------------------------------------------------------------------------------------------------------------
# coords / feats
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        lambda c: c.float(),
        lambda c: c.double(),
        lambda c: c.bool(),
        lambda c: c[:, :3].contiguous(),
        lambda c: torch.cat([c, c[:, :1]], 1),
        lambda c: c.reshape(-1),
        lambda c: c.reshape(1, -1, 4),
    ],
    ids=["float32", "float64", "bool", "Nx3", "Nx5", "1d", "3d"],
)
def test_bad_coords(bad):
    feats, coords = _good()
    _raises(["coords"], lambda: _build_and_conv(feats, bad(coords), spatial_shape=(6, 6, 6), batch_size=2))


@pytest.mark.parametrize(
    "bad",
    [
        lambda f: f.to(torch.int32),
        lambda f: f.to(torch.int64),
        lambda f: f.reshape(-1),
        lambda f: f.reshape(1, *f.shape),
    ],
    ids=["int32", "int64", "1d", "3d"],
)
def test_bad_feats(bad):
    feats, coords = _good()
    _raises(["feats"], lambda: _build_and_conv(bad(feats), coords, spatial_shape=(6, 6, 6), batch_size=2))


@pytest.mark.parametrize("delta", [-1, 1])
def test_n_mismatch(delta):
    feats, coords = _good(10)
    feats = random_feats(10 + delta, 3, torch.float32, seed=2)
    _raises(["feats", "coords"], lambda: _build_and_conv(feats, coords, spatial_shape=(6,) * 3, batch_size=2))


@pytest.mark.parametrize("col", [0, 1, 2, 3])
def test_negative_coordinates(col):
    feats, coords = _good()
    coords[4, col] = -1
    _raises(["coords"], lambda: _build_and_conv(feats, coords, spatial_shape=(6, 6, 6), batch_size=2))
    _raises(["coords"], lambda: _build_and_conv(feats, coords))


def test_batch_index_beyond_batch_size():
    feats, coords = _good()
    coords[3, 0] = 2
    names = ["batch_size", "coords"]
    _raises(names, lambda: _build_and_conv(feats, coords, spatial_shape=(6,) * 3, batch_size=2))


@pytest.mark.parametrize("axis", [1, 2, 3])
@pytest.mark.parametrize("conv", ["subm", "strided"])
def test_coords_beyond_spatial_shape(axis, conv):
    feats, coords = _good()
    coords[5, axis] = 6
    layer = SubMConv3d(3, 2, 3) if conv == "subm" else SparseConv3d(3, 2, 3, stride=2)
    _raises(
        ["coords", "spatial_shape"],
        lambda: _build_and_conv(feats, coords, layer, spatial_shape=(6, 6, 6), batch_size=2),
    )


@pytest.mark.parametrize("conv", ["subm", "strided"])
def test_duplicate_coordinates(conv):
    feats, coords = _good()
    coords[7] = coords[2]
    layer = SubMConv3d(3, 2, 3) if conv == "subm" else SparseConv3d(3, 2, 3, stride=2)
    with pytest.raises(ValueError, match="coords"):
        _build_and_conv(feats, coords, layer, spatial_shape=(6, 6, 6), batch_size=2)


@pytest.mark.parametrize(
    "row",
    [[0, 131072, 0, 0], [0, 0, 131072, 0], [0, 0, 0, 200000], [4096, 0, 0, 0]],
    ids=["x", "y", "z", "batch"],
)
@pytest.mark.parametrize("conv", ["subm", "strided"])
def test_coords_beyond_key_range(row, conv):
    coords = torch.tensor([[0, 1, 1, 1], row], dtype=torch.int32)
    feats = torch.ones(2, 1)
    layer = SubMConv3d(1, 1, 3) if conv == "subm" else SparseConv3d(1, 1, 2, stride=2)
    with pytest.raises(ValueError) as info:
        layer(SparseTensor(feats, coords))
    assert "coords" in str(info.value) or "batch" in str(info.value) or "spatial_shape" in str(info.value)


def test_coords_beyond_key_range_low_level():
    coords = torch.tensor([[0, 1, 1, 1], [0, 131072, 0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="coords"):
        torch.ops.sparseconv.build_subm_map(coords, [3, 3, 3], [1, 1, 1])
    coords = torch.tensor([[0, 1, 1, 1], [4096, 0, 0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="coords"):
        torch.ops.sparseconv.build_subm_map(coords, [3, 3, 3], [1, 1, 1])
    with pytest.raises(ValueError, match="coords"):
        torch.ops.sparseconv.build_strided_map(coords, [4, 4, 4], [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1])


def test_coords_at_top_of_key_range_work():
    coords = torch.tensor([[4095, 131071, 131071, 131071], [4095, 131070, 131071, 131071]], dtype=torch.int32)
    feats = torch.tensor([[1.0], [2.0]], dtype=f64)
    layer = SubMConv3d(1, 1, 3, bias=False).to(f64)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        out = layer(SparseTensor(feats, coords))
    assert torch.equal(out.feats, torch.tensor([[3.0], [3.0]], dtype=f64))


# ------------------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", ["subm", "strided", "inverse"])
def test_channel_mismatch(conv):
    x = make_sparse(2, 8, 0.1, 3, torch.float32, seed=3)
    if conv == "subm":
        _raises(["in_channels", "feats"], lambda: SubMConv3d(4, 2, 3)(x))
    elif conv == "strided":
        _raises(["in_channels", "feats"], lambda: SparseConv3d(2, 2, 3, stride=2)(x))
    else:
        y = SparseConv3d(3, 4, 2, stride=2, indice_key="cm")(x)
        _raises(["in_channels", "feats"], lambda: SparseInverseConv3d(5, 2, 2, indice_key="cm")(y))


@pytest.mark.parametrize(
    "make",
    [
        lambda: SubMConv3d(1, 1, 0),
        lambda: SubMConv3d(1, 1, (3, 3)),
        lambda: SubMConv3d(1, 1, 3, dilation=0),
        lambda: SparseConv3d(1, 1, 3, stride=0),
        lambda: SparseConv3d(1, 1, 3, padding=-1),
        lambda: SparseConv3d(1, 1, -2),
    ],
    ids=["k0", "k2tuple", "dil0", "stride0", "pad-1", "k-2"],
)
def test_bad_layer_geometry(make):
    x = make_sparse(1, 8, 0.1, 1, torch.float32, seed=4)
    _raises(["kernel_size", "dilation", "stride", "padding"], lambda: make()(x))


def test_inverse_with_unknown_key():
    x = make_sparse(1, 8, 0.1, 2, torch.float32, seed=5)
    _raises(["indice_key"], lambda: SparseInverseConv3d(2, 2, 3, indice_key="never-used")(x))


def test_kernel_larger_than_input():
    x = make_sparse(1, 4, 0.3, 1, torch.float32, seed=6)
    _raises(["kernel_size", "padding", "spatial_shape"], lambda: SparseConv3d(1, 1, 5)(x))


# ------------------------------------------------------------------------------------------------------------
# devices
# ------------------------------------------------------------------------------------------------------------


def test_non_cpu_tensors_without_cuda_build():
    if sparseconv.build_info().get("cuda"):
        pytest.skip("built with CUDA: non-CPU tensors are supported")
    feats, coords = _good()
    # 'meta' stands in for a device this build has no kernels for. The operators themselves have shape-only
    # kernels there (the fake kernels torch.compile traces with); the SparseTensor refuses such a device.
    nbr = torch.ops.sparseconv.build_subm_map(coords.to("meta"), [3, 3, 3], [1, 1, 1])
    assert nbr.device.type == "meta" and tuple(nbr.shape) == (27, coords.shape[0])
    with pytest.raises(ERR + (NotImplementedError, RuntimeError)):
        x = SparseTensor(feats.to("meta"), coords.to("meta"), spatial_shape=(6, 6, 6), batch_size=2)
        SubMConv3d(3, 2, 3).to("meta")(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_without_cuda_build():
    if sparseconv.build_info().get("cuda"):
        pytest.skip("built with CUDA")
    feats, coords = _good()
    _raises(
        ["coords", "feats", "device", "CUDA", "cuda"],
        lambda: _build_and_conv(feats.cuda(), coords.cuda(), spatial_shape=(6, 6, 6), batch_size=2),
    )


def test_mixed_devices_feats_coords():
    feats, coords = _good()
    with pytest.raises(ERR + (NotImplementedError, RuntimeError)):
        _build_and_conv(feats.to("meta"), coords, spatial_shape=(6, 6, 6), batch_size=2)


# ------------------------------------------------------------------------------------------------------------
# empty inputs and NaN
# ------------------------------------------------------------------------------------------------------------


def test_empty_input_everywhere():
    feats = torch.zeros(0, 3)
    coords = torch.zeros(0, 4, dtype=torch.int32)
    x = SparseTensor(feats, coords, spatial_shape=(6, 6, 6), batch_size=2)
    assert tuple(x.dense().shape) == (2, 3, 6, 6, 6)
    a = SubMConv3d(3, 4, 3)(x)
    b = SparseConv3d(4, 5, 3, stride=2, indice_key="e")(a)
    c = SparseInverseConv3d(5, 2, 3, indice_key="e")(b)
    assert tuple(a.feats.shape) == (0, 4)
    assert tuple(b.feats.shape) == (0, 5) and tuple(b.coords.shape) == (0, 4)
    assert tuple(b.spatial_shape) == (2, 2, 2)
    assert tuple(c.feats.shape) == (0, 2) and tuple(c.spatial_shape) == (6, 6, 6)
    nbr = torch.ops.sparseconv.build_subm_map(coords, [3, 3, 3], [1, 1, 1])
    assert tuple(nbr.shape) == (27, 0)


@pytest.mark.parametrize("cin,cout,k", [(0, 4, 27), (3, 0, 27), (3, 4, 0)])
def test_zero_channels_or_offsets(cin, cout, k):
    # Zero-size weights (no input channels, no output channels, no kernel offsets) give zeros, not a crash.
    x = make_sparse(1, 6, 0.3, 3, f64, seed=3)
    nbr = torch.ops.sparseconv.build_subm_map(x.coords, [3, 3, 3], [1, 1, 1])[:k].contiguous()
    feats = x.feats[:, :cin].contiguous()
    n = feats.shape[0]
    gw = torch.ops.sparseconv.sparse_conv_weight_grad(feats, torch.ones(n, cout, dtype=f64), nbr)
    assert tuple(gw.shape) == (k, cin, cout)
    out = torch.ops.sparseconv.sparse_conv(feats, torch.ones(k, cin, cout, dtype=f64), None, nbr, None)
    assert tuple(out.shape) == (n, cout) and not out.any()


def test_nan_propagates():
    x = make_sparse(1, 8, 0.3, 2, f64, seed=7)
    feats = x.feats.clone()
    bad_row = 11
    feats[bad_row, 1] = float("nan")
    xs = x.replace(feats)
    layer = set_params(SubMConv3d(2, 3, 3), f64, 1)
    strided = set_params(SparseConv3d(2, 3, 3, stride=2, padding=1), f64, 2)
    with torch.no_grad():
        out = layer(xs)
        out2 = strided(xs)
    for o, kw in ((out, dict(padding=1)), (out2, dict(stride=2, padding=1))):
        # Sites whose receptive field holds the NaN site: NaN in every channel; all others finite.
        nan_site = occupancy(xs.coords[bad_row : bad_row + 1], 1, 8)
        hit = F.conv3d(nan_site, torch.ones(1, 1, 3, 3, 3, dtype=f64), **kw)
        c = o.coords.long()
        expect_nan = hit[c[:, 0], 0, c[:, 1], c[:, 2], c[:, 3]] > 0
        assert expect_nan.any()
        assert torch.equal(torch.isnan(o.feats).all(1), expect_nan)
        assert torch.equal(torch.isnan(o.feats).any(1), expect_nan)
