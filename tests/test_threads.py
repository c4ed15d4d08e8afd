"""Results do not depend on the number of threads: bitwise-identical forward and backward."""

from __future__ import annotations

import pytest
import torch

import sparseconv
from conftest import make_sparse, set_params
from sparseconv.nn import SparseConv3d, SparseInverseConv3d, SubMConv3d


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _run(threads, dtype):
    torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    # Large enough (about 7000 sites) for every parallel loop to split into several chunks.
    x = make_sparse(2, 24, 0.25, 8, dtype, seed=123)
    feats = x.feats.detach().clone().requires_grad_(True)
    x = sparseconv.SparseTensor(feats, x.coords, spatial_shape=x.spatial_shape, batch_size=x.batch_size)
    a = set_params(SubMConv3d(8, 16, 3, indice_key="t0"), dtype, 1)
    b = set_params(SparseConv3d(16, 16, 3, stride=2, padding=1, indice_key="t1"), dtype, 2)
    c = set_params(SubMConv3d(16, 16, (3, 1, 3), dilation=2), dtype, 3)
    d = set_params(SparseInverseConv3d(16, 4, 3, indice_key="t1"), dtype, 4)
    h = a(x)
    h = b(h)
    h = c(h)
    out = d(h)
    g = torch.Generator().manual_seed(5)
    up = torch.randn(out.feats.shape, generator=g, dtype=torch.float64).to(dtype)
    (out.feats * up).sum().backward()
    result = [out.coords, out.feats.detach(), h.coords, feats.grad]
    for layer in (a, b, c, d):
        result += [layer.weight.grad, layer.bias.grad]
    return result


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [2, 3])
def test_thread_count_bitwise_identical(restore_threads, dtype, threads):
    one = _run(1, dtype)
    many = _run(threads, dtype)
    assert len(one) == len(many)
    for i, (u, v) in enumerate(zip(one, many)):
        assert u is not None and v is not None, f"missing result {i}"
        assert u.dtype == v.dtype and u.shape == v.shape, f"result {i}"
        assert torch.equal(u, v), f"result {i} differs between 1 and {threads} threads"


def test_thread_count_kernel_maps(restore_threads):
    x = make_sparse(3, 20, 0.3, 1, torch.float32, seed=9)
    maps = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        m1 = torch.ops.sparseconv.build_subm_map(x.coords, [3, 3, 3], [1, 1, 1])
        oc, m2 = torch.ops.sparseconv.build_strided_map(
            x.coords, [20, 20, 20], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1]
        )
        m3 = torch.ops.sparseconv.invert_map(m2, x.coords.shape[0])
        maps.append((m1, oc, m2, m3))
    for u, v in zip(*maps):
        assert torch.equal(u, v)
