"""The CUDA backend against the CPU backend (itself tested against torch's dense ops by the rest of the
suite), plus dense references, float64 gradcheck, float16/bfloat16, autocast and determinism on the GPU.

Skips without a GPU, or when this build of sparseconv has no CUDA kernels. Both convolution paths are run
(SPARSECONV_CUDA_ALGO=gemm and =fused; the automatic choice picks one of them by size).

Stated tolerances (CPU vs CUDA, same dtype, TF32 off):
  kernel maps, invert_map, voxelize, max-pool argmax: exact (torch.equal); error messages: same first line.
  float64: rtol 1e-9, atol 1e-10 x max(1, |ref|max)   (summation order / FMA contraction only)
  float32: rtol 1e-4, atol 1e-4 x max(1, |ref|max)
  float16 / bfloat16 vs the float32 CUDA result on the same (rounded) inputs and weights: relative L2 error of
  outputs and gradients <= 1e-2 (float16) / 5e-2 (bfloat16); roughly 5-10x the rounding of one output.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import sparseconv
from conftest import (assert_close, dense_at, make_sparse, random_feats, scatter_dense, seed_of, set_params,
                      triple)
from sparseconv import nn as snn

_HAVE = torch.cuda.is_available() and bool(sparseconv.build_info().get("cuda"))
pytestmark = pytest.mark.skipif(
    not _HAVE,
    reason="no CUDA device" if not torch.cuda.is_available() else "sparseconv built without CUDA kernels",
)

ops = torch.ops.sparseconv
f64, f32, f16, bf16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
ALGOS = ["gemm", "fused"]
HALF_TOL = {f16: 1e-2, bf16: 5e-2}


@pytest.fixture(autouse=True)
def _cuda_state():
    tf32 = torch.backends.cuda.matmul.allow_tf32 if _HAVE else False
    if _HAVE:
        torch.backends.cuda.matmul.allow_tf32 = False
    yield
    if _HAVE:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    sparseconv.set_deterministic(False)


@pytest.fixture(params=ALGOS)
def algo(request, monkeypatch):
    monkeypatch.setenv("SPARSECONV_CUDA_ALGO", request.param)
    return request.param


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def to_cuda(x):
    return sparseconv.SparseTensor(x.feats.cuda(), x.coords.cuda(), x.spatial_shape, x.batch_size)


def run(model, x, seed=0):
    """Forward + backward with a fixed upstream gradient: (output tensor, input grad, parameter grads)."""
    feats = x.feats.detach().clone().requires_grad_(True)
    out = model(sparseconv.SparseTensor(feats, x.coords, x.spatial_shape, x.batch_size))
    g = torch.Generator().manual_seed(seed + 1)
    up = torch.randn(out.feats.shape, generator=g, dtype=f64).to(out.feats.dtype).to(out.feats.device)
    (out.feats * up).sum().backward()
    return out, feats.grad, [p.grad for p in model.parameters()]


def compare_cpu_cuda(make, x, dtype, seed=0):
    """The same model (same parameters) on CPU and CUDA: sites exact, values within the dtype's tolerance."""
    torch.manual_seed(seed)
    model = make().to(dtype)
    model_cuda = copy.deepcopy(model).cuda()
    out, gin, gp = run(model, x, seed)
    out_c, gin_c, gp_c = run(model_cuda, to_cuda(x), seed)
    assert torch.equal(out_c.coords.cpu(), out.coords), "output sites differ"
    assert out_c.feats.dtype == dtype
    assert_close(out_c.feats.cpu(), out.feats, dtype, "forward")
    assert_close(gin_c.cpu(), gin, dtype, "input gradient")
    for a, b in zip(gp_c, gp):
        assert_close(a.cpu(), b, dtype, "parameter gradient")


# ------------------------------------------------------------------------------------------------------------
# Kernel maps: exact agreement with the CPU (same order, same entries)
# ------------------------------------------------------------------------------------------------------------

SUBM_KERNELS = [1, 2, 3, 5, (2, 5, 3), (7, 1, 4)]


@pytest.mark.parametrize("dilation", [1, 2, (1, 3, 2)], ids=str)
@pytest.mark.parametrize("kernel", SUBM_KERNELS, ids=str)
def test_subm_map_matches_cpu(kernel, dilation):
    k, d = triple(kernel), triple(dilation)
    x = make_sparse(3, (12, 9, 14), 0.2, 1, seed=seed_of((k, d)))
    ref = ops.build_subm_map(x.coords, list(k), list(d))
    got = ops.build_subm_map(x.coords.cuda(), list(k), list(d))
    assert got.is_cuda and torch.equal(got.cpu(), ref)


def test_subm_map_large_coordinates_and_empty():
    c = torch.tensor([[4095, 131071, 131071, 131071], [4095, 131070, 131071, 131071], [0, 0, 0, 0],
                      [0, 1, 0, 0], [4094, 131071, 131071, 131071]], dtype=torch.int32)
    assert torch.equal(ops.build_subm_map(c.cuda(), [3, 3, 3], [1, 1, 1]).cpu(),
                       ops.build_subm_map(c, [3, 3, 3], [1, 1, 1]))
    empty = torch.zeros(0, 4, dtype=torch.int32)
    assert tuple(ops.build_subm_map(empty.cuda(), [3, 3, 3], [1, 1, 1]).shape) == (27, 0)


def _strided_cases():
    from test_kmap_bruteforce import STRIDED

    return STRIDED


@pytest.mark.parametrize("case", _strided_cases(), ids=str)
def test_strided_map_matches_cpu(case):
    k, s, p, d = (triple(v) for v in case)
    shape = tuple(max(9, dd * (kk - 1) + 1 - 2 * pp + 1) for kk, pp, dd in zip(k, p, d))
    x = make_sparse(2, shape, 0.15, 1, seed=seed_of(case))
    args = (list(shape), list(k), list(s), list(p), list(d))
    ref_coords, ref_nbr = ops.build_strided_map(x.coords, *args)
    coords, nbr = ops.build_strided_map(x.coords.cuda(), *args)
    assert torch.equal(coords.cpu(), ref_coords), "output coordinates (sorted by b, x, y, z) differ"
    assert torch.equal(nbr.cpu(), ref_nbr)
    n = x.coords.shape[0]
    assert torch.equal(ops.invert_map(nbr, n).cpu(), ops.invert_map(ref_nbr, n))


@pytest.mark.parametrize("n", [0, 1])
def test_strided_map_tiny(n):
    c = torch.zeros(n, 4, dtype=torch.int32)
    args = ([5, 5, 5], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    a, b = ops.build_strided_map(c, *args)
    ac, bc = ops.build_strided_map(c.cuda(), *args)
    assert torch.equal(ac.cpu(), a) and torch.equal(bc.cpu(), b)


@pytest.mark.parametrize("K,m,n_in", [(1, 1, 1), (4, 10, 7), (27, 30, 50), (8, 0, 5), (5, 6, 0), (0, 3, 3)])
def test_invert_random_map(K, m, n_in):
    g = torch.Generator().manual_seed(K * 1000 + m * 10 + n_in)
    nbr = torch.full((K, m), -1, dtype=torch.int32)
    for row in nbr:
        if n_in > 0 and m > 0:
            cnt = int(torch.randint(0, min(m, n_in) + 1, (1,), generator=g))
            pos = torch.randperm(m, generator=g)[:cnt]
            row[pos] = torch.randperm(n_in, generator=g)[:cnt].to(torch.int32)
    assert torch.equal(ops.invert_map(nbr.cuda(), n_in).cpu(), ops.invert_map(nbr, n_in))


def _first_line(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value).splitlines()[0]


@pytest.mark.parametrize("problem", ["duplicate", "negative", "key_range", "batch_range", "outside_shape"])
def test_coordinate_errors_match_cpu(problem):
    c = make_sparse(2, 6, 0.3, 1, seed=1).coords.clone()
    if problem == "duplicate":
        c[7] = c[3]
    elif problem == "negative":
        c[5, 2] = -1
    elif problem == "key_range":
        c[4, 1] = 1 << 17
    elif problem == "batch_range":
        c[6, 0] = 1 << 12
    else:
        c[2, 3] = 6
    builders = [lambda t: ops.build_strided_map(t, [6, 6, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])]
    if problem != "outside_shape":  # submanifold maps have no spatial_shape
        builders.append(lambda t: ops.build_subm_map(t, [3, 3, 3], [1, 1, 1]))
    for build in builders:
        assert _first_line(lambda: build(c.cuda())) == _first_line(lambda: build(c))


def test_invert_map_rejects_out_of_range():
    nbr = torch.tensor([[0, 5]], dtype=torch.int32)
    assert _first_line(lambda: ops.invert_map(nbr.cuda(), 3)) == _first_line(lambda: ops.invert_map(nbr, 3))


# ------------------------------------------------------------------------------------------------------------
# Convolutions: CPU vs CUDA (float64, float32), both paths
# ------------------------------------------------------------------------------------------------------------

CONV_CASES = [
    # (kind, kernel, stride, padding, dilation, cin, cout, shape, density)
    ("subm", 3, 1, 0, 1, 3, 4, 10, 0.15),
    ("subm", 3, 1, 0, 2, 16, 32, 12, 0.10),
    ("subm", (1, 3, 5), 1, 0, (2, 1, 1), 5, 7, (9, 11, 13), 0.2),
    ("subm", 2, 1, 0, 1, 8, 8, 9, 0.2),
    ("subm", 3, 1, 0, 1, 64, 96, 10, 0.1),
    ("subm", 3, 1, 0, 1, 130, 33, 8, 0.1),
    ("conv", 2, 2, 0, 1, 4, 8, 10, 0.2),
    ("conv", 3, 2, 1, 1, 17, 31, (9, 10, 11), 0.1),
    ("conv", 5, 3, 2, 2, 8, 4, 12, 0.05),
    ("inverse", 2, 2, 0, 1, 8, 16, 10, 0.2),
    ("inverse", 3, 2, 1, 1, 32, 8, 9, 0.1),
]


def make_layer(case):
    kind, k, s, p, d, cin, cout, _, _ = case
    if kind == "subm":
        return lambda: snn.SubMConv3d(cin, cout, k, dilation=d)
    if kind == "conv":
        return lambda: snn.SparseConv3d(cin, cout, k, stride=s, padding=p, dilation=d)
    return lambda: snn.SparseSequential(snn.SparseConv3d(cin, cout, k, stride=s, padding=p, dilation=d,
                                                         indice_key="cu"),
                                        snn.SparseInverseConv3d(cout, cin, k, indice_key="cu"))


@pytest.mark.parametrize("dtype", [f64, f32], ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c[:7])))
def test_conv_matches_cpu(case, dtype, algo):
    x = make_sparse(2, triple(case[7]), case[8], case[5], dtype, seed=seed_of(case))
    compare_cpu_cuda(make_layer(case), x, dtype, seed=seed_of(case))


@pytest.mark.parametrize("n", [0, 1])
def test_conv_tiny(n, algo):
    x = make_sparse(2, 7, None, 3, f64, seed=5, n=n)
    compare_cpu_cuda(lambda: snn.SparseConv3d(3, 2, 3, stride=2, padding=1), x, f64)
    compare_cpu_cuda(lambda: snn.SubMConv3d(3, 2, 3, bias=False), x, f64)


def test_subm_vs_dense_conv3d_on_cuda(algo):
    """Directly against torch's CUDA conv3d (not through the CPU backend)."""
    x = to_cuda(make_sparse(2, 10, 0.2, 4, f64, seed=21))
    layer = set_params(snn.SubMConv3d(4, 6, 3), f64, 21).cuda()
    out = layer(x)
    W = layer.weight.detach().permute(4, 3, 0, 1, 2)
    ref = F.conv3d(scatter_dense(x.feats, x.coords, 2, (10, 10, 10)), W, layer.bias.detach(), padding=1)
    assert_close(out.feats, dense_at(ref, x.coords), f64)


def test_op_level_weight_grad_and_bad_map(algo, monkeypatch):
    x = make_sparse(2, 8, 0.3, 5, f64, seed=3)
    nbr = ops.build_subm_map(x.coords, [3, 3, 3], [1, 1, 1])
    go = random_feats(x.coords.shape[0], 7, f64, 4)
    ref = ops.sparse_conv_weight_grad(x.feats, go, nbr)
    got = ops.sparse_conv_weight_grad(x.feats.cuda(), go.cuda(), nbr.cuda())
    assert_close(got.cpu(), ref, f64)
    bad = nbr.clone()
    bad[0, 0] = x.coords.shape[0] + 3
    monkeypatch.setenv("SPARSECONV_CUDA_CHECKS", "1")
    w = torch.randn(27, 5, 7, dtype=f64)
    with pytest.raises(ValueError, match="nbr"):
        ops.sparse_conv(x.feats.cuda(), w.cuda(), None, bad.cuda(), None)
    with pytest.raises(ValueError, match="nbr"):
        ops.sparse_conv_weight_grad(x.feats.cuda(), go.cuda(), bad.cuda())


def test_mixed_devices_are_refused():
    x = make_sparse(1, 6, 0.3, 2, f64, seed=2)
    nbr = ops.build_subm_map(x.coords, [3, 3, 3], [1, 1, 1])
    w = torch.randn(27, 2, 3, dtype=f64)
    with pytest.raises(ValueError, match="nbr"):
        ops.sparse_conv(x.feats.cuda(), w.cuda(), None, nbr, None)
    with pytest.raises(ValueError, match="weight"):
        ops.sparse_conv(x.feats.cuda(), w, None, nbr.cuda(), None)


# ------------------------------------------------------------------------------------------------------------
# float16 / bfloat16 against float32 on the GPU
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [f16, bf16], ids=str)
@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[0] != "inverse"] + [CONV_CASES[-1]],
                         ids=lambda c: "-".join(map(str, c[:7])))
def test_half_precision_conv(case, dtype, algo):
    x = make_sparse(2, triple(case[7]), case[8], case[5], f32, seed=seed_of(case))
    x = sparseconv.SparseTensor(x.feats.to(dtype).float(), x.coords, x.spatial_shape, x.batch_size)  # rounded
    torch.manual_seed(0)
    model = make_layer(case)().to(dtype).cuda()
    ref_model = copy.deepcopy(model).float()
    out, gin, gp = run(model, to_cuda(x.replace(x.feats.to(dtype))))
    ref, rgin, rgp = run(ref_model, to_cuda(x))
    assert out.feats.dtype == dtype
    tol = HALF_TOL[dtype]
    assert rel_err(out.feats, ref.feats) <= tol, "forward"
    assert rel_err(gin, rgin) <= tol, "input gradient"
    for a, b in zip(gp, rgp):
        assert rel_err(a, b) <= tol, "parameter gradient"


# ------------------------------------------------------------------------------------------------------------
# gradcheck (float64, small inputs) on the GPU
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["subm", "conv", "inverse"])
def test_gradcheck_cuda(kind, algo):
    x = to_cuda(make_sparse(2, 5, None, 2, f64, seed=7, n=12))
    torch.manual_seed(1)
    if kind == "subm":
        layer = snn.SubMConv3d(2, 3, 3)
    elif kind == "conv":
        layer = snn.SparseConv3d(2, 3, 3, stride=2, padding=1)
    else:
        down = snn.SparseConv3d(2, 2, 2, stride=2, indice_key="g").to(f64).cuda()
        with torch.no_grad():
            x = down(x)
        layer = snn.SparseInverseConv3d(2, 3, 2, indice_key="g")
    layer = layer.to(f64).cuda()
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    feats = x.feats.detach().clone().requires_grad_(True)

    def f(feats, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x.replace(feats),)).feats

    assert torch.autograd.gradcheck(f, (feats, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# Pooling, voxelize, top-k, dense bridges, global pooling
# ------------------------------------------------------------------------------------------------------------

POOL_CASES = [(2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 1, 1), (2, 1, 0, 2), ((3, 2, 1), (2, 1, 1), (1, 0, 0), 1)]


@pytest.mark.parametrize("dtype", [f64, f32], ids=str)
@pytest.mark.parametrize("pool", [snn.SparseMaxPool3d, snn.SparseAvgPool3d], ids=lambda p: p.__name__)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_matches_cpu(case, pool, dtype):
    k, s, p, d = case
    x = make_sparse(2, 9, 0.2, 5, dtype, seed=seed_of(case))
    compare_cpu_cuda(lambda: pool(k, s, p, d), x, dtype)


def test_max_pool_argmax_exact_and_nan():
    x = make_sparse(2, 8, 0.3, 4, f32, seed=4)
    x.feats[3, 1] = float("nan")
    _, nbr = ops.build_strided_map(x.coords, [8, 8, 8], [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1])
    nt = ops.invert_map(nbr, x.coords.shape[0])
    out, arg = ops.sparse_max_pool(x.feats, nbr, nt)
    out_c, arg_c = ops.sparse_max_pool(x.feats.cuda(), nbr.cuda(), nt.cuda())
    assert torch.equal(arg_c.cpu(), arg)
    torch.testing.assert_close(out_c.cpu(), out, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [f16, bf16], ids=str)
@pytest.mark.parametrize("pool", [snn.SparseMaxPool3d, snn.SparseAvgPool3d], ids=lambda p: p.__name__)
def test_half_precision_pool(pool, dtype):
    x = make_sparse(2, 9, 0.2, 5, f32, seed=8)
    xr = to_cuda(x.replace(x.feats.to(dtype).float()))
    out, gin, _ = run(pool(2, 2), xr.replace(xr.feats.to(dtype)))
    ref, rgin, _ = run(pool(2, 2), xr)
    assert out.feats.dtype == dtype
    assert rel_err(out.feats, ref.feats) <= HALF_TOL[dtype] and rel_err(gin, rgin) <= HALF_TOL[dtype]


@pytest.mark.parametrize("dtype", [f64, f32, f16], ids=str)
def test_voxelize_matches_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(5000, 3, generator=g, dtype=f64) * torch.tensor([40.0, 30.0, 8.0]) - 3).to(dtype)
    feats = torch.randn(5000, 2, generator=g, dtype=f64).to(dtype)
    for reduce in ("mean", "sum", "max"):
        x, p2v = sparseconv.voxelize(pts, feats, voxel_size=(0.5, 0.5, 0.25), reduce=reduce)
        xc, p2vc = sparseconv.voxelize(pts.cuda(), feats.cuda(), voxel_size=(0.5, 0.5, 0.25), reduce=reduce)
        assert torch.equal(xc.coords.cpu(), x.coords) and torch.equal(p2vc.cpu(), p2v)
        assert xc.spatial_shape == x.spatial_shape
        torch.testing.assert_close(xc.feats.cpu(), x.feats, rtol=1e-3 if dtype == f16 else 1e-5, atol=1e-3)
    back = sparseconv.devoxelize(xc.feats, p2vc)
    assert back.is_cuda and back.shape == (5000, 2)


def test_voxelize_error_matches_cpu():
    pts = torch.rand(20, 3, dtype=f64)
    pts[11, 1] = float("nan")
    args = ([0.1, 0.1, 0.1], [0.0, 0.0, 0.0])
    expected = _first_line(lambda: ops.voxelize(pts, *args))
    assert _first_line(lambda: ops.voxelize(pts.cuda(), *args)) == expected


def test_topk_dense_bridges_global_pool_collate():
    x = make_sparse(3, 10, 0.2, 4, f64, seed=12)
    xc = to_cuda(x)
    topk = snn.SparseTopK(max_active=40)
    assert torch.equal(topk(xc).coords.cpu(), topk(x).coords)
    assert torch.equal(xc.dense().cpu(), x.dense())
    back = sparseconv.SparseTensor.from_dense(xc.dense())
    assert torch.equal(back.coords.cpu(), sparseconv.SparseTensor.from_dense(x.dense()).coords)
    assert torch.equal(snn.ToDense((8, 8, 8))(xc).cpu(), snn.ToDense((8, 8, 8))(x))
    for pool in (snn.GlobalMaxPool(), snn.GlobalAvgPool()):
        assert_close(pool(xc).cpu(), pool(x), f64)
    both = sparseconv.sparse_collate([xc, xc])
    assert both.feats.is_cuda and both.batch_size == 6


def test_unet_matches_cpu():
    from sparseconv.models import SparseUNet

    x = make_sparse(2, 16, 0.05, 4, f64, seed=6)
    compare_cpu_cuda(lambda: SparseUNet(4, 3, channels=(8, 16)), x, f64)


# ------------------------------------------------------------------------------------------------------------
# autocast, determinism, opcheck, build facts
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [f16, bf16], ids=str)
def test_autocast_runs_conv_in_autocast_dtype(dtype):
    x = to_cuda(make_sparse(2, 12, 0.2, 8, f32, seed=9))
    torch.manual_seed(0)
    net = snn.SparseSequential(snn.SubMConv3d(8, 16, 3), snn.SparseReLU(),
                               snn.SparseConv3d(16, 16, 2, stride=2, indice_key="d"),
                               snn.SparseMaxPool3d(2), ).cuda()
    conv = snn.SubMConv3d(8, 16, 3).cuda()
    ref = conv(x)
    feats = x.feats.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype):
        out = conv(x.replace(feats))
        deep = net(x)
    assert out.feats.dtype == dtype and deep.feats.dtype == dtype
    assert rel_err(out.feats, ref.feats) <= HALF_TOL[dtype]
    out.feats.float().sum().backward()
    assert feats.grad.dtype == f32 and conv.weight.grad.dtype == f32 and conv.bias.grad.dtype == f32
    with torch.autocast("cuda", dtype=dtype):  # float64 is left alone, as torch's autocast does
        x64 = x.replace(x.feats.double())
        assert conv.double()(x64).feats.dtype == f64


def test_gradscaler_fp16_training_steps():
    """fp16 autocast + torch.amp.GradScaler for a few SGD steps of a small sparse net: gradients come back in
    float32, the scaler keeps a finite scale (steps whose scaled gradients overflow are skipped, as designed),
    and the loss goes down."""
    x = to_cuda(make_sparse(2, 12, 0.25, 8, f32, seed=11))
    torch.manual_seed(0)
    net = snn.SparseSequential(snn.SubMConv3d(8, 16, 3), snn.SparseBatchNorm(16), snn.SparseReLU(),
                               snn.SubMConv3d(16, 4, 3)).cuda()
    target = torch.randint(0, 4, (x.feats.shape[0],), device="cuda")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cuda")
    losses = []
    for _ in range(8):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=f16):
            loss = F.cross_entropy(net(x).feats.float(), target)
        scaler.scale(loss).backward()
        assert all(p.grad.dtype == f32 for p in net.parameters())
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    assert 0 < scaler.get_scale() < float("inf")
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("mode", ["sparseconv", "torch"])
def test_deterministic_mode_bitwise_repeat(mode, algo, monkeypatch):
    x = to_cuda(make_sparse(2, 16, 0.2, 8, f32, seed=10))
    if mode == "sparseconv":
        sparseconv.set_deterministic(True)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = snn.SparseSequential(snn.SubMConv3d(8, 16, 3), snn.SparseReLU(),
                                     snn.SparseConv3d(16, 16, 3, stride=2, padding=1, indice_key="s"),
                                     snn.SparseMaxPool3d(2, 1), snn.SparseAvgPool3d(1),
                                     snn.SparseInverseConv3d(16, 8, 3, indice_key="s")).cuda()
        if mode == "torch":
            # torch's own rule: cuBLAS (the gemm path) needs CUBLAS_WORKSPACE_CONFIG under this switch
            monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        try:
            out, gin, gp = run(model, x)
        finally:
            torch.use_deterministic_algorithms(False)
        results.append([out.feats, gin] + gp)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_forward_is_bitwise_repeatable_without_deterministic_mode(algo):
    x = to_cuda(make_sparse(2, 16, 0.2, 8, f16, seed=11))
    conv = snn.SubMConv3d(8, 24, 3).half().cuda()
    with torch.no_grad():
        assert torch.equal(conv(x).feats, conv(x).feats)


def test_opcheck_cuda():
    from torch.library import opcheck

    from test_opcheck import _cases

    for name, (op, args) in _cases().items():
        moved = tuple(a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                      for a in args)
        opcheck(op, moved)


def test_build_info_reports_cuda():
    info = sparseconv.build_info()
    assert info["cuda"] and info["cuda_version"] and info["cuda_archs"]
    assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0]
