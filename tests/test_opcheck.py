"""torch.library.opcheck on every operator: schema, fake kernels (data-dependent sizes included), autograd."""
from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import sparseconv  # noqa: F401

ops = torch.ops.sparseconv
f64 = torch.float64


def _case():
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 6, (40, 4), generator=g, dtype=torch.int32)
    c[:, 0] %= 2
    c = torch.unique(c, dim=0).contiguous()
    n = c.shape[0]
    nbr = ops.build_subm_map(c, [3, 3, 3], [1, 1, 1])
    _, snbr = ops.build_strided_map(c, [6, 6, 6], [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1])
    snt = ops.invert_map(snbr, n)
    f = torch.randn(n, 3, dtype=f64, generator=g, requires_grad=True)
    return c, n, nbr, snbr, snt, f, g


def _cases():
    c, n, nbr, snbr, snt, f, g = _case()
    w = torch.randn(27, 3, 4, dtype=f64, generator=g, requires_grad=True)
    w8 = torch.randn(8, 3, 4, dtype=f64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=f64, generator=g, requires_grad=True)
    return {
        "sparse_conv_subm": (ops.sparse_conv, (f, w, b, nbr, None)),
        "sparse_conv_strided": (ops.sparse_conv, (f, w8, None, snbr, snt)),
        "sparse_conv_weight_grad": (ops.sparse_conv_weight_grad, (f.detach(), torch.randn(n, 4, dtype=f64), nbr)),
        "sparse_max_pool": (ops.sparse_max_pool, (f, snbr, snt)),
        "sparse_avg_pool": (ops.sparse_avg_pool, (f, snbr, snt)),
        "invert_map": (ops.invert_map, (snbr, n)),
        "invert_map_sym": (ops.invert_map_sym, (snbr, n)),
        "sparse_max_pool_backward": (ops.sparse_max_pool_backward,
                                     (torch.randn(snbr.shape[1], 3, dtype=f64, generator=g),
                                      ops.sparse_max_pool(f.detach(), snbr, snt)[1], snt)),
        "sparse_avg_pool_backward": (ops.sparse_avg_pool_backward,
                                     (torch.randn(snbr.shape[1], 3, dtype=f64, generator=g), snbr, snt)),
        "build_subm_map": (ops.build_subm_map, (c, [3, 3, 3], [1, 1, 1])),
        "build_subm_map_even": (ops.build_subm_map, (c, [2, 3, 4], [1, 2, 1])),
        "build_strided_map": (ops.build_strided_map, (c, [6, 6, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])),
        # Reduced dtypes (computed in float32): the same checks, bfloat16 features and weights.
        "sparse_conv_subm_bf16": (ops.sparse_conv, (f.detach().bfloat16().requires_grad_(), w.detach().bfloat16(),
                                                    None, nbr, None)),
        "sparse_conv_weight_grad_f16": (ops.sparse_conv_weight_grad,
                                        (f.detach().half(), torch.randn(n, 4, generator=g).half(), nbr)),
        "sparse_max_pool_bf16": (ops.sparse_max_pool, (f.detach().bfloat16().requires_grad_(), snbr, snt)),
        "sparse_avg_pool_f16": (ops.sparse_avg_pool, (f.detach().half().requires_grad_(), snbr, snt)),
        "voxelize": (ops.voxelize, (torch.rand(50, 3, dtype=f64, generator=g) * 4, [1.0, 0.5, 1.0], [0.0] * 3)),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_opcheck(name):
    op, args = _cases()[name]
    opcheck(op, args)


def test_every_operator_is_checked():
    names = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("sparseconv::")}
    checked = {op.__name__.split(".")[0] for op, _ in _cases().values()}
    assert names == checked, names ^ checked
