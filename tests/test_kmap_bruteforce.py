"""Kernel maps (torch.ops.sparseconv.*) against brute-force pure-Python dict lookups, every kernel offset."""

from __future__ import annotations

import itertools

import pytest
import torch

import sparseconv  # noqa: F401  (registers torch.ops.sparseconv)
from conftest import random_coords, seed_of, triple

ops = torch.ops.sparseconv


def brute_subm(coords, k, d):
    rows = [tuple(r) for r in coords.tolist()]
    table = {r: i for i, r in enumerate(rows)}
    shift = [(kk - 1) * dd // 2 for kk, dd in zip(k, d)]
    nbr = []
    for a, b, c in itertools.product(range(k[0]), range(k[1]), range(k[2])):
        dx, dy, dz = a * d[0] - shift[0], b * d[1] - shift[1], c * d[2] - shift[2]
        nbr.append([table.get((bb, x + dx, y + dy, z + dz), -1) for (bb, x, y, z) in rows])
    return torch.tensor(nbr, dtype=torch.int32).reshape(len(nbr), len(rows))


def brute_strided(coords, shape, k, s, p, d):
    """Gathers over the whole output grid: output o reads input o*s - p + offset*d; kept if any read hits."""
    rows = [tuple(r) for r in coords.tolist()]
    table = {r: i for i, r in enumerate(rows)}
    out_shape = [(X + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for X, kk, ss, pp, dd in zip(shape, k, s, p, d)]
    offs = list(itertools.product(range(k[0]), range(k[1]), range(k[2])))
    batches = sorted({r[0] for r in rows})
    outs, cols = [], []
    for b in batches:
        for ox, oy, oz in itertools.product(*(range(o) for o in out_shape)):
            bx, by, bz = ox * s[0] - p[0], oy * s[1] - p[1], oz * s[2] - p[2]
            col = [table.get((b, bx + a * d[0], by + bb * d[1], bz + c * d[2]), -1) for a, bb, c in offs]
            if any(j >= 0 for j in col):
                outs.append((b, ox, oy, oz))
                cols.append(col)
    K = len(offs)
    out_coords = torch.tensor(outs, dtype=torch.int32).reshape(-1, 4)
    nbr = torch.tensor(cols, dtype=torch.int32).reshape(-1, K).t().contiguous()
    return out_coords, nbr


def brute_invert(nbr, n_in):
    K, m = nbr.shape
    out = [[-1] * n_in for _ in range(K)]
    for k, row in enumerate(nbr.tolist()):
        for i, j in enumerate(row):
            if j >= 0:
                out[k][j] = i
    return torch.tensor(out, dtype=torch.int32).reshape(K, n_in)


def _coords(batch, shape, n, seed):
    total = batch * shape[0] * shape[1] * shape[2]
    return random_coords(batch, shape, n=min(n, total), seed=seed)


# ------------------------------------------------------------------------------------------------------------
# build_subm_map
# ------------------------------------------------------------------------------------------------------------

SUBM_KERNELS = [1, 2, 3, 4, 5, 6, 7, (2, 5, 3), (7, 1, 4), (1, 1, 6)]


@pytest.mark.parametrize("dilation", [1, 2, 3, (1, 3, 2)])
@pytest.mark.parametrize("kernel", SUBM_KERNELS, ids=str)
def test_subm_map(kernel, dilation):
    k, d = triple(kernel), triple(dilation)
    n = 40 if k[0] * k[1] * k[2] <= 125 else 20
    coords = _coords(2, (7, 6, 8), n, seed_of((kernel, dilation)))
    nbr = ops.build_subm_map(coords, list(k), list(d))
    assert nbr.dtype == torch.int32
    assert tuple(nbr.shape) == (k[0] * k[1] * k[2], coords.shape[0])
    assert torch.equal(nbr, brute_subm(coords, k, d))


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("kernel", [1, 2, 3])
def test_subm_map_tiny(kernel, n):
    k, d = triple(kernel), (1, 1, 1)
    coords = _coords(1, (4, 4, 4), n, 3)
    nbr = ops.build_subm_map(coords, list(k), list(d))
    assert tuple(nbr.shape) == (k[0] * k[1] * k[2], n)
    assert torch.equal(nbr, brute_subm(coords, k, d))


def test_subm_map_dense_block():
    """Every site of a full 5^3 block (two batches) active: the most neighbours per site."""
    coords = random_coords(2, (5, 5, 5), n=250, seed=1)
    for k in [(3, 3, 3), (4, 2, 5)]:
        nbr = ops.build_subm_map(coords, list(k), [1, 1, 1])
        assert torch.equal(nbr, brute_subm(coords, k, (1, 1, 1)))


def test_subm_map_large_coordinates():
    """Coordinates near the top of the packed-key range (131071) and batch 4095."""
    coords = torch.tensor(
        [
            [4095, 131071, 131071, 131071],
            [4095, 131070, 131071, 131071],
            [0, 0, 0, 0],
            [0, 1, 0, 0],
            [4094, 131071, 131071, 131071],
        ],
        dtype=torch.int32,
    )
    nbr = ops.build_subm_map(coords, [3, 3, 3], [1, 1, 1])
    assert torch.equal(nbr, brute_subm(coords, (3, 3, 3), (1, 1, 1)))


# ------------------------------------------------------------------------------------------------------------
# build_strided_map
# ------------------------------------------------------------------------------------------------------------

# (kernel, stride, padding, dilation): every kernel 1..7, stride 1..4, dilation 1..3, padding 0..3 appears.
STRIDED = [
    (1, 1, 0, 1),
    (1, 2, 1, 1),
    (2, 2, 0, 1),
    (2, 1, 0, 2),
    (2, 3, 1, 3),
    (3, 1, 1, 1),
    (3, 2, 1, 1),
    (3, 3, 0, 2),
    (3, 4, 2, 1),
    (4, 2, 1, 1),
    (4, 4, 0, 1),
    (4, 1, 3, 2),
    (5, 1, 2, 1),
    (5, 3, 2, 2),
    (5, 2, 0, 3),
    (6, 2, 3, 1),
    (6, 3, 1, 2),
    (7, 1, 3, 1),
    (7, 4, 2, 1),
    (7, 2, 3, 3),
    ((3, 1, 2), (1, 2, 3), (1, 0, 0), (1, 1, 1)),
    ((2, 5, 1), (2, 1, 4), (0, 2, 1), (3, 1, 2)),
    ((1, 4, 7), (3, 3, 1), (0, 1, 3), (2, 2, 1)),
]


def _strided_case(kernel, stride, padding, dilation, n, seed, batch=2):
    k, s, p, d = triple(kernel), triple(stride), triple(padding), triple(dilation)
    shape = tuple(max(6, dd * (kk - 1) + 1 - 2 * pp + 1) for kk, pp, dd in zip(k, p, d))
    coords = _coords(batch, shape, n, seed)
    out_coords, nbr = ops.build_strided_map(coords, list(shape), list(k), list(s), list(p), list(d))
    ref_coords, ref_nbr = brute_strided(coords, shape, k, s, p, d)
    assert out_coords.dtype == torch.int32 and nbr.dtype == torch.int32
    assert torch.equal(out_coords, ref_coords), "output coords (sorted by b, x, y, z) differ"
    assert tuple(nbr.shape) == (k[0] * k[1] * k[2], ref_coords.shape[0])
    assert torch.equal(nbr, ref_nbr)
    return coords, out_coords, nbr


@pytest.mark.parametrize("case", STRIDED, ids=str)
def test_strided_map(case):
    kernel, stride, padding, dilation = case
    _strided_case(kernel, stride, padding, dilation, 30, seed_of(case))


@pytest.mark.parametrize("case", STRIDED[::4], ids=str)
def test_strided_map_dense(case):
    """Densely occupied input (about half of all sites)."""
    kernel, stride, padding, dilation = case
    _strided_case(kernel, stride, padding, dilation, 400, seed_of(case) + 1, batch=1)


@pytest.mark.parametrize("n", [0, 1])
def test_strided_map_tiny(n):
    coords = _coords(1, (6, 6, 6), n, 2)
    out_coords, nbr = ops.build_strided_map(coords, [6, 6, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    ref_coords, ref_nbr = brute_strided(coords, (6, 6, 6), (3,) * 3, (2,) * 3, (1,) * 3, (1,) * 3)
    assert tuple(out_coords.shape) == tuple(ref_coords.shape)
    assert tuple(nbr.shape) == (27, ref_coords.shape[0])
    assert torch.equal(out_coords, ref_coords)
    assert torch.equal(nbr, ref_nbr)


# ------------------------------------------------------------------------------------------------------------
# invert_map
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", STRIDED[::3], ids=str)
def test_invert_strided_map(case):
    coords, _, nbr = _strided_case(*case, n=30, seed=seed_of(case) + 2)
    n_in = coords.shape[0]
    inv = ops.invert_map(nbr, n_in)
    assert inv.dtype == torch.int32
    assert torch.equal(inv, brute_invert(nbr, n_in))


@pytest.mark.parametrize("kernel", [2, 3, (5, 1, 3)], ids=str)
def test_invert_subm_map(kernel):
    k = triple(kernel)
    coords = _coords(2, (6, 6, 6), 50, 4)
    nbr = ops.build_subm_map(coords, list(k), [1, 1, 1])
    inv = ops.invert_map(nbr, coords.shape[0])
    assert torch.equal(inv, brute_invert(nbr, coords.shape[0]))
    if all(kk % 2 == 1 for kk in k):
        # Odd kernels are centre-symmetric: the transposed map is the map with its offsets reversed.
        assert torch.equal(inv, nbr.flip(0))


@pytest.mark.parametrize("K,m,n_in", [(1, 1, 1), (4, 10, 7), (27, 30, 50), (8, 0, 5), (5, 6, 0), (0, 3, 3)])
def test_invert_random_map(K, m, n_in):
    """Random maps, each row injective (as every convolution map is), some n_in rows never referenced."""
    g = torch.Generator().manual_seed(K * 1000 + m * 10 + n_in)
    rows = []
    for _ in range(K):
        row = torch.full((m,), -1, dtype=torch.int32)
        if n_in > 0 and m > 0:
            cnt = int(torch.randint(0, min(m, n_in) + 1, (1,), generator=g))
            pos = torch.randperm(m, generator=g)[:cnt]
            row[pos] = torch.randperm(n_in, generator=g)[:cnt].to(torch.int32)
        rows.append(row)
    nbr = torch.stack(rows) if rows else torch.empty((0, m), dtype=torch.int32)
    inv = ops.invert_map(nbr.contiguous(), n_in)
    assert tuple(inv.shape) == (K, n_in)
    assert torch.equal(inv, brute_invert(nbr, n_in))


def test_invert_map_rejects_out_of_range():
    nbr = torch.tensor([[0, 5, -1]], dtype=torch.int32)
    with pytest.raises((ValueError, TypeError), match="nbr|n_in"):
        ops.invert_map(nbr, 3)


def test_strided_map_scattered_inputs_outgrow_the_first_table():
    """Isolated inputs (4 apart) each reach 27 distinct outputs: more than the 8 per input the first hash table
    is sized for, so the C++ builder has to start again with the worst-case table. Reference: every
    (input, offset) pair scattered to its output (stride 1, padding 1), sorted and deduplicated in NumPy."""
    import numpy as np

    g = np.arange(1, 64, 4)
    xyz = np.stack(np.meshgrid(g, g, g[:8], indexing="ij"), -1).reshape(-1, 3)
    assert len(xyz) * 27 > 8 * len(xyz) and len(xyz) * 8 > 2 * torch.get_num_threads() * 27 + 4096
    coords = torch.from_numpy(np.concatenate([np.zeros((len(xyz), 1), np.int64), xyz], 1).astype(np.int32))
    out_coords, nbr = ops.build_strided_map(coords, [64, 64, 64], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1])
    offs = np.array(list(itertools.product(range(3), repeat=3)))
    outs = xyz[:, None, :] + 1 - offs[None]  # output o = x + padding - a
    keys = outs.reshape(-1, 3)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    ref_nbr = np.full((27, len(uniq)), -1, np.int32)
    rows = np.repeat(np.arange(len(xyz)), 27)
    ks = np.tile(np.arange(27), len(xyz))
    ref_nbr[ks, inv.reshape(-1)] = rows
    assert out_coords.shape[0] == len(uniq) == 27 * len(xyz)
    assert torch.equal(out_coords[:, 1:], torch.from_numpy(uniq.astype(np.int32)))
    assert torch.equal(nbr, torch.from_numpy(ref_nbr))


def test_strided_map_rejects_an_output_grid_past_the_key_range():
    coords = torch.tensor([[0, 131071, 0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="output grid"):
        ops.build_strided_map(coords, [131072, 8, 8], [3, 3, 3], [1, 1, 1], [2, 2, 2], [1, 1, 1])
