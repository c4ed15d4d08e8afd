"""SparseTopK: the per-batch bound holds exactly (ties included), the strongest sites are kept, gradients reach
kept sites only, and maps cached before the drop stay consistent (inverse conv after TopK)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import sparseconv
from conftest import assert_close, dense_at, make_sparse, scatter_dense, set_params, sort_rows
from sparseconv.nn import SparseConv3d, SparseInverseConv3d, SparseTopK, SubMConv3d

f64 = torch.float64


def per_batch(coords, B):
    return torch.bincount(coords[:, 0].long(), minlength=B)


@pytest.mark.parametrize("score", ["l2", "l1", "max"])
@pytest.mark.parametrize("k", [0, 1, 7, 40, 10_000])
def test_keeps_min_k_n_strongest(score, k):
    x = make_sparse(3, 8, 0.1, 4, f64, seed=k + len(score))
    y = SparseTopK(max_active=k, score=score)(x)
    n_b = per_batch(x.coords, 3)
    assert torch.equal(per_batch(y.coords, 3), n_b.clamp(max=k))
    s = {"l2": x.feats.norm(dim=1), "l1": x.feats.abs().sum(1), "max": x.feats.amax(1)}[score]
    for b in range(3):
        rows = x.coords[:, 0] == b
        expect = torch.sort(s[rows], descending=True).values[: min(k, int(n_b[b]))]
        kept = {"l2": y.feats.norm(dim=1), "l1": y.feats.abs().sum(1), "max": y.feats.amax(1)}[score]
        assert torch.equal(torch.sort(kept[y.coords[:, 0] == b], descending=True).values, expect)
    # Kept sites keep their input order (sorted inputs stay sorted).
    index = {tuple(r): i for i, r in enumerate(x.coords.tolist())}
    rows = [index[tuple(r)] for r in y.coords.tolist()]
    assert rows == sorted(rows)


def test_bound_with_ties_and_density():
    x = make_sparse(2, 10, 0.2, 3, f64, seed=5)
    tied = x.replace(torch.ones_like(x.feats))
    y = SparseTopK(max_active=13)(tied)
    assert torch.equal(per_batch(y.coords, 2), torch.tensor([13, 13]))
    z = SparseTopK(max_density=0.01)(x)  # floor(0.01 * 1000) = 10 per batch element
    assert torch.equal(per_batch(z.coords, 2), torch.tensor([10, 10]))
    w = SparseTopK(max_active=5, max_density=0.01)(x)
    assert torch.equal(per_batch(w.coords, 2), torch.tensor([5, 5]))


def test_nan_scores_rank_last():
    x = make_sparse(1, 6, 0.3, 2, f64, seed=2)
    feats = x.feats.clone()
    feats[:3, 0] = float("nan")
    y = SparseTopK(max_active=x.coords.shape[0] - 3)(x.replace(feats))
    assert not torch.isnan(y.feats).any()


def test_gradient_only_at_kept_sites():
    x = make_sparse(2, 8, 0.15, 3, f64, seed=7)
    feats = x.feats.clone().requires_grad_(True)
    y = SparseTopK(max_active=9)(x.replace(feats))
    y.feats.sum().backward()
    kept = (feats.grad != 0).all(1)
    assert int(kept.sum()) == y.coords.shape[0]
    assert torch.equal(sort_rows(x.coords[kept]), sort_rows(y.coords))
    layer = SparseTopK(max_active=4)
    assert gradcheck(lambda f: layer(x.replace(f)).feats, (feats,), eps=1e-6, atol=1e-7)


def test_inverse_conv_after_topk_uses_consistent_maps():
    """SparseConv3d -> SparseTopK -> SparseInverseConv3d equals conv_transpose3d of the kept sites."""
    x = make_sparse(2, 10, 0.2, 3, f64, seed=8)
    down = set_params(SparseConv3d(3, 4, 2, stride=2, indice_key="d"), f64, 1)
    up = set_params(SparseInverseConv3d(4, 2, 2, indice_key="d"), f64, 2)
    h = down(x)
    kept = SparseTopK(max_active=12)(h)
    feats = kept.feats.detach().clone().requires_grad_(True)
    out = up(kept.replace(feats))
    assert torch.equal(out.coords, x.coords)
    dense = scatter_dense(feats, kept.coords, 2, h.spatial_shape)
    wt = up.weight.detach().permute(3, 4, 0, 1, 2)
    ref = F.conv_transpose3d(dense, wt, up.bias.detach(), stride=2)
    ref_at = dense_at(ref, x.coords)
    assert_close(out.feats, ref_at)
    g = torch.randn_like(out.feats)
    assert_close(torch.autograd.grad(out.feats, feats, g)[0], torch.autograd.grad(ref_at, feats, g)[0])


def test_submanifold_after_topk_uses_new_sites():
    x = make_sparse(1, 8, 0.3, 2, f64, seed=4)
    conv = set_params(SubMConv3d(2, 2, 3), f64, 3)
    conv(x)  # caches a map for x's sites
    y = SparseTopK(max_active=20)(x)
    out = conv(y)
    fresh = conv(sparseconv.SparseTensor(y.feats, y.coords, y.spatial_shape, 1))
    assert_close(out.feats, fresh.feats)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_active"):
        SparseTopK()
    with pytest.raises(ValueError, match="max_density"):
        SparseTopK(max_density=2.0)
    with pytest.raises(ValueError, match="score"):
        SparseTopK(5, score="median")
