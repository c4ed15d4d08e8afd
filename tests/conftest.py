"""Shared helpers for the sparseconv test suite.

Everything here is written against PyTorch's dense operators (the references); nothing calls into sparseconv
except `make_sparse`, which only wraps already-built tensors in a SparseTensor.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import sparseconv  # noqa: E402  (a missing build must fail loudly, not skip)


def seed_of(obj):
    """Deterministic seed from any repr-able object (hash() of str is randomized per process)."""
    return zlib.crc32(repr(obj).encode()) % 100000


def triple(v):
    """int or 3-sequence -> tuple of 3 ints."""
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(a) for a in v)
    assert len(t) == 3
    return t


def random_coords(batch, shape, density=None, seed=0, n=None):
    """Unique int32 coords [N, 4] = (b, x, y, z), uniform over the batch x shape grid, in random order.

    N = n when given, else max(1, round(density * grid size)).
    """
    X, Y, Z = triple(shape)
    total = batch * X * Y * Z
    if n is None:
        n = max(1, int(round(density * total)))
    assert 0 <= n <= total
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(total, generator=g)[:n]
    z = flat % Z
    y = (flat // Z) % Y
    x = (flat // (Y * Z)) % X
    b = flat // (X * Y * Z)
    return torch.stack([b, x, y, z], 1).to(torch.int32).contiguous()


def random_feats(n, channels, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed + 7919)
    # Bounded away from zero, so every site is "active" in a from_dense sense as well.
    mag = torch.rand(n, channels, generator=g, dtype=torch.float64) + 0.25
    sign = torch.where(torch.rand(n, channels, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return (mag * sign).to(dtype).contiguous()


def make_sparse(batch, shape, density=None, channels=1, dtype=torch.float64, seed=0, n=None):
    """Random SparseTensor with unique int32 coords, explicit spatial_shape and batch_size."""
    coords = random_coords(batch, shape, density, seed, n)
    feats = random_feats(coords.shape[0], channels, dtype, seed)
    return sparseconv.SparseTensor(feats, coords, spatial_shape=triple(shape), batch_size=batch)


def conv_by_map(feats, weight, bias, nbr):
    """out[i] = bias + sum_k feats[nbr[k, i]] @ weight[k], entry by entry (a reference for tiny hand-made maps)."""
    out = bias.expand(nbr.shape[1], weight.shape[2]).clone()
    for k in range(nbr.shape[0]):
        for i in range(nbr.shape[1]):
            j = int(nbr[k, i])
            if j >= 0:
                out[i] = out[i] + feats[j] @ weight[k]
    return out


def scatter_dense(feats, coords, batch, shape):
    """Differentiable [B, C, X, Y, Z] tensor: feats at coords, zeros elsewhere (not the library's)."""
    X, Y, Z = triple(shape)
    C = feats.shape[1]
    dense = feats.new_zeros(batch, X, Y, Z, C)
    c = coords.long()
    dense = dense.index_put((c[:, 0], c[:, 1], c[:, 2], c[:, 3]), feats)
    return dense.permute(0, 4, 1, 2, 3).contiguous()


def dense_at(dense, coords):
    """Read a [B, C, X, Y, Z] tensor at coords [N, 4] -> [N, C]."""
    c = coords.long()
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def occupancy(coords, batch, shape, dtype=torch.float64):
    """[B, 1, X, Y, Z] tensor of ones at coords."""
    return scatter_dense(torch.ones(coords.shape[0], 1, dtype=dtype), coords, batch, shape)


def sort_rows(coords):
    """Rows of an int coords [N, 4] tensor sorted lexicographically by (b, x, y, z)."""
    if coords.shape[0] == 0:
        return coords.clone()
    c = coords.long()
    key = c[:, 0]
    for d in range(1, 4):
        span = int(c[:, d].max()) + 1
        key = key * span + c[:, d]
    return coords[torch.argsort(key)]


def is_sorted_rows(coords):
    return torch.equal(sort_rows(coords), coords)


def rand_weight(shape, dtype, seed, fan_in):
    g = torch.Generator().manual_seed(seed + 104729)
    return (torch.randn(shape, generator=g, dtype=torch.float64) / math.sqrt(max(fan_in, 1))).to(dtype)


def set_params(layer, dtype, seed):
    """Deterministic non-trivial weight and bias (bias non-zero so that it is really tested)."""
    layer.to(dtype)
    k0, k1, k2, cin, cout = layer.weight.shape
    with torch.no_grad():
        layer.weight.copy_(rand_weight(layer.weight.shape, dtype, seed, k0 * k1 * k2 * cin))
        if layer.bias is not None:
            layer.bias.copy_(rand_weight(layer.bias.shape, dtype, seed + 1, 4))
    return layer


def tols(dtype):
    if dtype == torch.float64:
        return dict(rtol=1e-9, atol=1e-10)
    return dict(rtol=1e-4, atol=1e-4)


def assert_close(actual, expected, dtype=None, msg=""):
    """assert_close with tolerances picked by dtype; atol scales with the reference's magnitude."""
    dtype = dtype or expected.dtype
    t = tols(dtype)
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().to(torch.float64),
        expected.detach().to(torch.float64),
        rtol=t["rtol"],
        atol=t["atol"] * scale,
        msg=(lambda m: f"{msg}\n{m}") if msg else None,
    )


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield
