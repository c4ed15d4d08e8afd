"""The CUDA backend, operator by operator, against references that were not written for the GPU.

Skips as a whole without a GPU, or when this build of sparseconv has no CUDA kernels.

References
  * the CPU operator on the same input, computed in float64 (the CPU backend is itself checked against
    torch.nn.functional.conv3d / conv_transpose3d / max_pool3d and brute-force Python maps by the rest of the suite);
  * torch.nn.functional.conv3d / conv_transpose3d on a densified float64 copy of the input, on the CPU;
  * brute-force Python dict lookups for kernel maps and voxels (tests/test_kmap_bruteforce.py, test_voxelize.py);
  * torch.autograd.gradcheck in float64 on the GPU, torch.library.opcheck on the GPU.

Tolerances (check_result), for a floating result of dtype T against the float64 CPU result on the same, already
rounded, inputs and parameters:
  * elementwise, the worst-case rounding bound |got - ref| <= (2 u + 2 n a) S, where S is the same computation on
    absolute values (|x| |w|, |grad| |w|, ...: an upper bound of every term), u the unit roundoff of T (2^-53,
    2^-24, 2^-11 for float16, 2^-8 for bfloat16), a that of the accumulator (float32 for the 16-bit types) and n
    the number of products summed per element, plus one subnormal spacing of T per rounding. It covers one rounding
    per kernel offset (the gemm path's products are rounded to T with torch < 2.8) plus the final one: a value
    outside it is a wrong value, not noise.
  * relative L2 error <= 1e-12 (float64), 1e-5 (float32: TF32 would fail it), 4 u (float16 2e-3, bfloat16 1.6e-2),
    which catches a few wrong rows that the elementwise bound alone could hide.
  * integer outputs (maps, output coordinates, argmax, point-to-voxel index) and max pooling: exact.
  * autocast against the float32 run on unrounded inputs, relative L2 (AUTOCAST_TOL): a net of sparse
    convolutions: outputs 2e-3 (float16) / 1e-2 (bfloat16), parameter gradients 3e-3 / 1.5e-2, input gradient
    6e-2 / 2e-1; whole models with batch norms (U-Net, classifier): outputs 5e-3 / 3e-2, parameter gradients
    8e-2 / 2.5e-1, input gradient 2e-1 / 5e-1. Losses are sums, not means: float16 gradients of a mean over
    thousands of sites underflow without a GradScaler.
TF32 is off (torch.set_float32_matmul_precision("highest")) and cuBLAS's reduced-precision reductions for
float16/bfloat16 are off in every test unless a test says otherwise.

Convolution paths: SPARSECONV_CUDA_ALGO=gemm|fused (read by the C++ side on every call; "auto", the default, picks
by dtype and channel counts) forces gather-GEMM-scatter through cuBLAS or the fused kernel (WMMA tensor cores for
float16/bfloat16 on sm_80+, SIMT otherwise), for the forward, the input gradient and the weight gradient alike. The
`algo` fixture runs each convolution test under both; test_algo_env_var_selects_the_path checks in the profiler
that it really does (the gemm path calls aten::mm, the fused kernels appear by name).

Isolation: every test ends with torch.cuda.synchronize(), so an asynchronous CUDA error fails the test that caused
it; a context left unusable (illegal address, trap) stops the session with exit code 3 instead of failing every
later test, and tools/gpu_session.sh resumes with the tests not yet run.

Harness self-check: SPARSECONV_TEST_DEVICE=cpu runs every comparison CPU against CPU (tests that need a GPU skip).
It checks this file's logic and bounds on a machine without a GPU, not any CUDA kernel.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    assert_close,
    conv_by_map,
    dense_at,
    make_sparse,
    random_coords,
    random_feats,
    scatter_dense,
    seed_of,
    set_params,
    sort_rows,
    triple,
)

import sparseconv
from sparseconv import nn as snn

DEV = torch.device(os.environ.get("SPARSECONV_TEST_DEVICE", "cuda"))
EMULATED = DEV.type != "cuda"
_BUILT_CUDA = bool(sparseconv.build_info().get("cuda"))
_HAVE = EMULATED or (torch.cuda.is_available() and _BUILT_CUDA)
pytestmark = pytest.mark.skipif(
    not _HAVE, reason="no CUDA device" if not torch.cuda.is_available() else "sparseconv built without CUDA kernels")
needs_gpu = pytest.mark.skipif(EMULATED, reason="needs a real CUDA device (SPARSECONV_TEST_DEVICE=cpu)")

ops = torch.ops.sparseconv
f64, f32, f16, bf16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
DTYPES = [f64, f32, f16, bf16]
UNIT = {f64: 2.0**-53, f32: 2.0**-24, f16: 2.0**-11, bf16: 2.0**-8}
ACC = {f64: 2.0**-53, f32: 2.0**-24, f16: 2.0**-24, bf16: 2.0**-24}
REL_L2 = {f64: 1e-12, f32: 1e-5, f16: 4 * UNIT[f16], bf16: 4 * UNIT[bf16]}
TINY = {f64: 2.0**-1074, f32: 2.0**-149, f16: 2.0**-24, bf16: 2.0**-133}  # subnormal spacing: absolute rounding
# Autocast against the float32 run, relative L2: (outputs, all parameter gradients together, input gradient).
# "convs": a net of sparse convolutions and ReLUs only; "models": SparseUNet / VoxelClassifier, whose batch norms
# amplify rounding in the gradients (measured with the CPU kernels, which round as the CUDA ones do: 1/3 of these).
AUTOCAST_TOL = {"convs": {f16: (2e-3, 3e-3, 6e-2), bf16: (1e-2, 1.5e-2, 2e-1)},
                "models": {f16: (5e-3, 8e-2, 2e-1), bf16: (3e-2, 2.5e-1, 5e-1)}}


def dname(dtype):
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------------------------------
# Fixtures: numerics settings, the convolution path, and a synchronisation after every test
# ------------------------------------------------------------------------------------------------------------


def _set_numerics(state):
    """(float32 matmul precision, fp16 and bf16 reduced-precision cuBLAS reductions) -> the previous state."""
    m = torch.backends.cuda.matmul
    old = (torch.get_float32_matmul_precision(), getattr(m, "allow_fp16_reduced_precision_reduction", None),
           getattr(m, "allow_bf16_reduced_precision_reduction", None))
    torch.set_float32_matmul_precision(state[0])
    for name, value in zip(("allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction"),
                           state[1:]):
        if value is not None and hasattr(m, name):
            setattr(m, name, value)
    return old


def _sync_or_stop(nodeid):
    """Waits for the GPU. An error raised here came from this test's kernels; when the context is then unusable
    (illegal address, trap: every later CUDA call fails), stop the run rather than fail every later test."""
    try:
        torch.cuda.synchronize()
        return
    except Exception as e:
        first = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    try:
        torch.ones(1, device="cuda").add_(1)
        torch.cuda.synchronize()
    except Exception as e:
        pytest.exit(f"CUDA context unusable after {nodeid}: {first} / then: {str(e).strip().splitlines()[0]}",
                    returncode=3)
    pytest.fail(f"asynchronous CUDA error surfaced after the test body: {first}")


@pytest.fixture(autouse=True)
def _device_state(request):
    old = None
    if not EMULATED and _HAVE:
        old = _set_numerics(("highest", False, False))  # no TF32, no reduced-precision cuBLAS reductions
    yield
    sparseconv.set_deterministic(False)
    torch.use_deterministic_algorithms(False)
    if old is not None:
        _set_numerics(old)
        _sync_or_stop(request.node.nodeid)


@pytest.fixture(params=["gemm", "fused"])
def algo(request, monkeypatch):
    monkeypatch.setenv("SPARSECONV_CUDA_ALGO", request.param)
    return request.param


def set_algo(monkeypatch, name):
    if name == "auto":
        monkeypatch.delenv("SPARSECONV_CUDA_ALGO", raising=False)
    else:
        monkeypatch.setenv("SPARSECONV_CUDA_ALGO", name)


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------


def to_dev(x):
    """The same sites and features on DEV, with an empty kernel-map cache."""
    return sparseconv.SparseTensor(x.feats.to(DEV, copy=True), x.coords.to(DEV, copy=True), x.spatial_shape,
                                   x.batch_size)


def dev(t, dtype=None):
    """A copy on DEV (never the same tensor object, also when DEV is the CPU)."""
    if not isinstance(t, torch.Tensor):
        return t
    return t.to(device=DEV, dtype=dtype or t.dtype, copy=True)


def rounded(t, dtype):
    """t rounded to dtype, back in float64: the exact values a dtype run sees."""
    return t.to(dtype).double()


def upstream(shape, dtype, seed):
    """A random upstream gradient of `shape`, rounded to dtype, as float64 (CPU)."""
    g = torch.Generator().manual_seed(seed + 4242)
    return rounded(torch.randn(shape, generator=g, dtype=f64), dtype)


def check_result(got, ref, S, n_terms, dtype, what, roundings=2):
    """got (dtype, any device) against ref (float64, CPU, same rounded inputs); S = the computation on absolute
    values; roundings: how many times a value may be rounded to dtype on its way (per kernel offset on the gemm
    path), for the absolute error of values in dtype's subnormal range. See the module docstring for the bound."""
    got = got.detach().cpu().double()
    ref = ref.detach().cpu().double()
    S = S.detach().cpu().double()
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
    if got.numel() == 0:
        return
    assert torch.isfinite(got).all(), f"{what} ({dname(dtype)}): {int((~torch.isfinite(got)).sum())} non-finite values"
    bound = (2 * UNIT[dtype] + 2 * max(int(n_terms), 1) * ACC[dtype]) * S + roundings * TINY[dtype]
    err = (got - ref).abs()
    over = err > bound
    if over.any():
        i = int(torch.argmax(torch.where(over, err - bound, torch.zeros_like(err))))
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), got.shape))
        raise AssertionError(
            f"{what} ({dname(dtype)}): {int(over.sum())} of {got.numel()} values outside the worst-case rounding "
            f"bound; worst at {idx}: got {float(got[idx]):.9g}, expected {float(ref[idx]):.9g}, "
            f"|error| {float(err[idx]):.3g} > bound {float(bound[idx]):.3g}")
    norm = float(ref.norm())
    if norm > 0:
        rel = float(err.norm()) / norm
        assert rel <= REL_L2[dtype], f"{what} ({dname(dtype)}): relative L2 error {rel:.3g} > {REL_L2[dtype]:.3g}"


def rel_l2(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(model, x, seed=0):
    """Forward + backward with a fixed upstream gradient: (output tensor, input grad, parameter grads)."""
    feats = x.feats.detach().clone().requires_grad_(True)
    out = model(sparseconv.SparseTensor(feats, x.coords, x.spatial_shape, x.batch_size))
    g = torch.Generator().manual_seed(seed + 1)
    up = torch.randn(out.feats.shape, generator=g, dtype=f64).to(out.feats.dtype).to(out.feats.device)
    (out.feats * up).sum().backward()
    return out, feats.grad, [p.grad for p in model.parameters()]


def compare_cpu_cuda(make, x, dtype, seed=0):
    """The same model (same parameters) on CPU and DEV: sites exact, values within the dtype's tolerance."""
    torch.manual_seed(seed)
    model = make().to(dtype)
    model_dev = copy.deepcopy(model).to(DEV)
    out, gin, gp = run(model, x, seed)
    out_c, gin_c, gp_c = run(model_dev, to_dev(x), seed)
    assert torch.equal(out_c.coords.cpu(), out.coords), "output sites differ"
    assert out_c.feats.dtype == dtype and out_c.feats.device.type == DEV.type
    assert_close(out_c.feats.cpu(), out.feats, dtype, "forward")
    assert_close(gin_c.cpu(), gin, dtype, "input gradient")
    for a, b in zip(gp_c, gp):
        assert_close(a.cpu(), b, dtype, "parameter gradient")


def conv_op(device, dtype, feats, weight, bias, nbr, nbr_t, up):
    """sparseconv.ops.sparse_conv forward and backward (autograd, upstream gradient up) on device in dtype:
    {"out", "feats", "weight", "bias"}."""
    t = lambda a, grad=True: a.to(device=device, dtype=dtype, copy=True).requires_grad_(grad)
    f, w = t(feats), t(weight)
    b = None if bias is None else t(bias)
    out = sparseconv.ops.sparse_conv(f, w, b, nbr.to(device), None if nbr_t is None else nbr_t.to(device))
    res = {"out": out}
    if up is not None:
        out.backward(t(up, False))
        res.update(feats=f.grad, weight=w.grad, bias=None if b is None else b.grad)
    return res


def check_conv_op(dtype, feats, weight, bias, nbr, nbr_t, grads=True, what=""):
    """sparse_conv on DEV in dtype against the float64 CPU op on the same rounded values (forward and, with
    grads, input / weight / bias gradients through autograd)."""
    K, cin, cout = weight.shape
    n_out = nbr.shape[1]
    fr, wr = rounded(feats, dtype), rounded(weight, dtype)
    br = None if bias is None else rounded(bias, dtype)
    up = upstream((n_out, cout), dtype, K + cin + cout) if grads else None
    got = conv_op(DEV, dtype, fr, wr, br, nbr, nbr_t, up)
    ref = conv_op("cpu", f64, fr, wr, br, nbr, nbr_t, up)
    S = conv_op("cpu", f64, fr.abs(), wr.abs(), None if br is None else br.abs(), nbr, nbr_t,
                None if up is None else up.abs())
    assert got["out"].dtype == dtype and got["out"].device.type == DEV.type
    check_result(got["out"], ref["out"], S["out"], K * cin + 1, dtype, f"{what} forward", K + 1)
    if grads:
        check_result(got["feats"], ref["feats"], S["feats"], K * cout, dtype, f"{what} input gradient", K + 1)
        check_result(got["weight"], ref["weight"], S["weight"], n_out, dtype, f"{what} weight gradient")
        if bias is not None:
            check_result(got["bias"], ref["bias"], S["bias"], n_out, dtype, f"{what} bias gradient")


def op_maps(kind, seed, shape=(9, 10, 11), density=0.3):
    """(coords, nbr, nbr_t, n_in) of a submanifold 3x3x3 map, a strided 2x2x2/2 map or its inverse (transpose),
    built on the CPU (the map builders are tested on their own)."""
    coords = random_coords(2, shape, density, seed=seed)
    n = coords.shape[0]
    if kind == "subm":
        return coords, ops.build_subm_map(coords, [3, 3, 3], [1, 1, 1]), None, n
    _, nbr = ops.build_strided_map(coords, list(shape), [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1])
    nbr_t = ops.invert_map(nbr, n)
    if kind == "strided":
        return coords, nbr, nbr_t, n
    return coords, nbr_t, nbr, nbr.shape[1]  # inverse: the transposed map, read from the strided outputs


def random_map(K, n_out, n_in, seed, fill=0.6):
    """A map with random entries in [0, n_in) at `fill` of the places, -1 elsewhere (rows may repeat)."""
    g = torch.Generator().manual_seed(seed)
    nbr = torch.randint(0, max(n_in, 1), (K, n_out), generator=g, dtype=torch.int32)
    keep = torch.rand(K, n_out, generator=g) < fill
    return torch.where(keep & (n_in > 0), nbr, torch.full_like(nbr, -1)).contiguous()


def profiled(fn):
    """(names of the CPU-side operator events, names of the GPU kernels) while fn() runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    cpu, kernels = set(), set()
    for e in prof.events():
        (kernels if e.device_type == torch.autograd.DeviceType.CUDA else cpu).add(e.name)
    return cpu, kernels


def uses_mm(names):
    return any(n.startswith("aten::mm") or n.startswith("aten::addmm") for n in names)


# ------------------------------------------------------------------------------------------------------------
# Registration and build facts
# ------------------------------------------------------------------------------------------------------------


@needs_gpu
def test_every_operator_has_a_cuda_kernel():
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("sparseconv::"))
    missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")
               and not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CompositeExplicitAutograd")]
    assert not missing, f"no CUDA kernel for {missing}"
    for n in ("sparseconv::sparse_conv", "sparseconv::sparse_conv_weight_grad"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(n, "AutocastCUDA"), n


@needs_gpu
def test_build_info_reports_cuda_and_this_gpu():
    info = sparseconv.build_info()
    assert info["cuda"] and info["cuda_version"] and info["cuda_archs"]
    assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0]
    major, minor = torch.cuda.get_device_capability()
    archs = info["cuda_archs"].replace(" ", ";").split(";")
    assert any(a.startswith(f"{major}.{minor}") or (a.endswith("+PTX") and float(a[:-4]) <= major + minor / 10)
               for a in archs), f"built for {archs}, running on sm_{major}{minor}"


def test_import_registers_each_kernel_once():
    """A kernel registered twice for one dispatch key (e.g. AutocastCUDA from two files) only warns at import."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", "import sparseconv"], capture_output=True, text=True, timeout=120,
                          cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "previously registered kernel" not in proc.stderr, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------------------
# Kernel maps: exact agreement with the CPU (same order, same entries) and with brute force
# ------------------------------------------------------------------------------------------------------------

SUBM_KERNELS = [1, 2, 3, 5, (2, 5, 3), (7, 1, 4)]


@pytest.mark.parametrize("dilation", [1, 2, (1, 3, 2)], ids=str)
@pytest.mark.parametrize("kernel", SUBM_KERNELS, ids=str)
def test_subm_map_matches_cpu_and_bruteforce(kernel, dilation):
    from test_kmap_bruteforce import brute_subm

    k, d = triple(kernel), triple(dilation)
    x = make_sparse(3, (12, 9, 14), 0.2, 1, seed=seed_of((k, d)))
    ref = ops.build_subm_map(x.coords, list(k), list(d))
    got = ops.build_subm_map(dev(x.coords), list(k), list(d))
    assert got.device.type == DEV.type and got.dtype == torch.int32
    assert torch.equal(got.cpu(), ref)
    assert torch.equal(got.cpu(), brute_subm(x.coords, k, d))


def test_subm_map_large_coordinates_and_empty():
    c = torch.tensor([[4095, 131071, 131071, 131071], [4095, 131070, 131071, 131071], [0, 0, 0, 0],
                      [0, 1, 0, 0], [4094, 131071, 131071, 131071]], dtype=torch.int32)
    assert torch.equal(ops.build_subm_map(dev(c), [3, 3, 3], [1, 1, 1]).cpu(),
                       ops.build_subm_map(c, [3, 3, 3], [1, 1, 1]))
    empty = torch.zeros(0, 4, dtype=torch.int32)
    assert tuple(ops.build_subm_map(dev(empty), [3, 3, 3], [1, 1, 1]).shape) == (27, 0)


def _strided_cases():
    from test_kmap_bruteforce import STRIDED

    return STRIDED


@pytest.mark.parametrize("case", _strided_cases(), ids=str)
def test_strided_map_matches_cpu(case):
    from test_kmap_bruteforce import brute_strided

    k, s, p, d = (triple(v) for v in case)
    shape = tuple(max(9, dd * (kk - 1) + 1 - 2 * pp + 1) for kk, pp, dd in zip(k, p, d))
    x = make_sparse(2, shape, 0.15, 1, seed=seed_of(case))
    args = (list(shape), list(k), list(s), list(p), list(d))
    ref_coords, ref_nbr = ops.build_strided_map(x.coords, *args)
    coords, nbr = ops.build_strided_map(dev(x.coords), *args)
    assert torch.equal(coords.cpu(), ref_coords), "output coordinates (sorted by b, x, y, z) differ"
    assert torch.equal(nbr.cpu(), ref_nbr)
    n = x.coords.shape[0]
    assert torch.equal(ops.invert_map(nbr, n).cpu(), ops.invert_map(ref_nbr, n))
    if seed_of(case) % 3 == 0:  # brute force is slow in Python: a third of the cases
        bc, bn = brute_strided(x.coords, shape, k, s, p, d)
        assert torch.equal(coords.cpu(), bc) and torch.equal(nbr.cpu(), bn)


@pytest.mark.parametrize("spacing", [4, 1], ids=["scattered-rebuild", "dense"])
def test_strided_map_table_rebuild_matches_cpu(spacing):
    """Isolated inputs reach 27 distinct outputs each: more than the 8 per input the first hash table is sized
    for, so the builder must start again with the worst-case table (spacing 4); dense inputs do not (spacing 1)."""
    g = torch.arange(1, 64, spacing)
    xyz = torch.stack(torch.meshgrid(g, g, g[: max(8, 64 // (4 * spacing))], indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.int64), xyz], 1).to(torch.int32).contiguous()
    args = ([64, 64, 64], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1])
    ref_coords, ref_nbr = ops.build_strided_map(coords, *args)
    got_coords, got_nbr = ops.build_strided_map(dev(coords), *args)
    if spacing == 4:
        assert ref_coords.shape[0] == 27 * len(xyz)
    assert torch.equal(got_coords.cpu(), ref_coords) and torch.equal(got_nbr.cpu(), ref_nbr)


@pytest.mark.parametrize("n", [0, 1])
def test_strided_map_tiny(n):
    c = torch.zeros(n, 4, dtype=torch.int32)
    args = ([5, 5, 5], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    a, b = ops.build_strided_map(c, *args)
    ac, bc = ops.build_strided_map(dev(c), *args)
    assert torch.equal(ac.cpu(), a) and torch.equal(bc.cpu(), b)


@pytest.mark.parametrize("K,m,n_in", [(1, 1, 1), (4, 10, 7), (27, 30, 50), (8, 0, 5), (5, 6, 0), (0, 3, 3),
                                      (27, 5000, 4000)])
def test_invert_random_map(K, m, n_in):
    g = torch.Generator().manual_seed(K * 1000 + m * 10 + n_in)
    nbr = torch.full((K, m), -1, dtype=torch.int32)
    for row in nbr:
        if n_in > 0 and m > 0:
            cnt = int(torch.randint(0, min(m, n_in) + 1, (1,), generator=g))
            pos = torch.randperm(m, generator=g)[:cnt]
            row[pos] = torch.randperm(n_in, generator=g)[:cnt].to(torch.int32)
    assert torch.equal(ops.invert_map(dev(nbr), n_in).cpu(), ops.invert_map(nbr, n_in))


def test_hash_contention_many_equal_coordinates():
    """20,000 rows with one coordinate hit one hash slot at once: the CPU's duplicate error, same rows named."""
    c = random_coords(2, 40, n=3000, seed=4)
    c = torch.cat([c[:5], c[5:6].expand(20000, 4), c[6:]]).contiguous()
    for build in (lambda t: ops.build_subm_map(t, [3, 3, 3], [1, 1, 1]),
                  lambda t: ops.build_strided_map(t, [40, 40, 40], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])):
        assert _outcome(lambda: build(dev(c))) == _outcome(lambda: build(c)) != (None, None)


# ------------------------------------------------------------------------------------------------------------
# Convolutions, layer level: SubMConv3d / SparseConv3d / SparseInverseConv3d against float64 on the CPU
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
CASE_IDS = ["-".join(map(str, c[:7])) for c in CONV_CASES]


def layer_and_inputs(case, seed, n=None):
    """(layer in float64, input on the CPU, the same input on DEV) for a CONV_CASES entry (n sites when given);
    the inverse conv's input carries the map of the strided conv it inverts (built on each device)."""
    kind, k, s, p, d, cin, cout, shape, density = case
    torch.manual_seed(seed)
    x = make_sparse(2, triple(shape), density, cin, f64, seed=seed, n=n)
    if kind == "subm":
        return set_params(snn.SubMConv3d(cin, cout, k, dilation=d), f64, seed), x, to_dev(x)
    if kind == "conv":
        return set_params(snn.SparseConv3d(cin, cout, k, stride=s, padding=p, dilation=d), f64, seed), x, to_dev(x)
    down = snn.SparseConv3d(cin, cin, k, stride=s, padding=p, dilation=d, indice_key="inv").double()
    with torch.no_grad():
        y = down(x)
        yd = copy.deepcopy(down).to(DEV)(to_dev(x))
    assert torch.equal(yd.coords.cpu(), y.coords)
    feats = random_feats(y.coords.shape[0], cin, f64, seed + 1)
    up = set_params(snn.SparseInverseConv3d(cin, cout, k, indice_key="inv"), f64, seed + 2)
    return up, y.replace(feats), yd.replace(dev(feats))


def run_layer(layer, x, up_of):
    feats = x.feats.detach().clone().requires_grad_(True)
    out = layer(x.replace(feats))
    out.feats.backward(up_of(out.feats))
    grads = {"feats": feats.grad, "weight": layer.weight.grad}
    if layer.bias is not None:
        grads["bias"] = layer.bias.grad
    return out, grads


def check_layer(layer64, x_cpu, x_dev, dtype, seed):
    """layer on DEV in dtype against the same rounded parameters and inputs in float64 on the CPU."""
    lay = copy.deepcopy(layer64).to(dtype)  # parameters rounded to dtype
    ref_layer = copy.deepcopy(lay).double()
    abs_layer = copy.deepcopy(ref_layer)
    with torch.no_grad():
        for p in abs_layer.parameters():
            p.abs_()
    dev_layer = copy.deepcopy(lay).to(DEV)
    fr = rounded(x_cpu.feats, dtype)
    up = {}

    def up_of(kind):
        def make(o):
            if "u" not in up:
                up["u"] = upstream(tuple(o.shape), dtype, seed)
            u = up["u"].abs() if kind == "abs" else up["u"]
            return u.to(device=o.device, dtype=o.dtype)
        return make

    ref, ref_g = run_layer(ref_layer, x_cpu.replace(fr), up_of("ref"))
    S, S_g = run_layer(abs_layer, x_cpu.replace(fr.abs()), up_of("abs"))
    got, got_g = run_layer(dev_layer, x_dev.replace(dev(fr, dtype)), up_of("ref"))
    assert got.feats.dtype == dtype and got.feats.device.type == DEV.type
    assert torch.equal(got.coords.cpu(), ref.coords), "output sites differ"
    assert got.spatial_shape == ref.spatial_shape
    K = layer64.weight.shape[0] * layer64.weight.shape[1] * layer64.weight.shape[2]
    cin, cout = layer64.weight.shape[3], layer64.weight.shape[4]
    n_out = ref.feats.shape[0]
    check_result(got.feats, ref.feats, S.feats, K * cin + 1, dtype, "forward", K + 1)
    terms = {"feats": K * cout, "weight": n_out, "bias": n_out}
    for name in ref_g:
        check_result(got_g[name], ref_g[name], S_g[name], terms[name], dtype, f"{name} gradient",
                     K + 1 if name == "feats" else 2)


@pytest.mark.parametrize("path", ["gemm", "fused", "auto"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("case", CONV_CASES, ids=CASE_IDS)
def test_layer_matches_float64_cpu(case, dtype, path, monkeypatch):
    set_algo(monkeypatch, path)
    seed = seed_of(case)
    layer, x, xd = layer_and_inputs(case, seed)
    check_layer(layer, x, xd, dtype, seed)


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("kind", ["subm", "conv", "inverse"])
def test_layer_tiny(n, kind, algo):
    """0, 1 and 2 sites (empty launches, a single row, a single output tile row) through forward and backward."""
    case = (kind, 3, 2, 1, 1, 3, 2, 7, None)
    layer, x, xd = layer_and_inputs(case, 5, n=n)
    check_layer(layer, x, xd, f64, 5)
    if kind == "subm":
        layer.bias = None
        check_layer(layer, x, xd, f64, 6)


@pytest.mark.parametrize("kind", ["subm", "conv", "inverse"])
def test_layer_vs_dense_torch_reference(kind, algo):
    """Directly against torch.nn.functional.conv3d / conv_transpose3d on a densified float64 copy (CPU), not
    through the CPU backend: outputs, input, weight and bias gradients."""
    from test_conv_reference import (
        conv_out_shape,
        expected_strided_sites,
        torch_conv_weight,
        torch_convT_weight,
    )

    k, s, p, d, B, shape, cin, cout = (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 2, (9, 10, 11), 5, 6
    x = make_sparse(B, shape, 0.15, cin, f64, seed=21)
    if kind == "subm":
        layer = set_params(snn.SubMConv3d(cin, cout, k), f64, 21)
        xin, xin_dev = x, to_dev(x)
    elif kind == "conv":
        layer = set_params(snn.SparseConv3d(cin, cout, k, stride=s, padding=p), f64, 21)
        xin, xin_dev = x, to_dev(x)
    else:
        down = snn.SparseConv3d(cin, cin, k, stride=s, padding=p, indice_key="dn").double()
        with torch.no_grad():
            y = down(x)
            yd = copy.deepcopy(down).to(DEV)(to_dev(x))
        feats = random_feats(y.coords.shape[0], cin, f64, 22)
        xin, xin_dev = y.replace(feats), yd.replace(dev(feats))
        layer = set_params(snn.SparseInverseConv3d(cin, cout, k, indice_key="dn"), f64, 23)
    dl = copy.deepcopy(layer).to(DEV)
    feats = xin_dev.feats.detach().clone().requires_grad_(True)
    out = dl(xin_dev.replace(feats))
    up = upstream(tuple(out.feats.shape), f64, 24)
    out.feats.backward(dev(up))

    D = scatter_dense(xin.feats.detach(), xin.coords, B, tuple(xin.spatial_shape)).requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    if kind == "inverse":
        W = torch_convT_weight(layer).requires_grad_(True)
        ygrid = tuple(xin.spatial_shape)
        out_pad = tuple(X - ((Yo - 1) * ss - 2 * pp + dd * (kk - 1) + 1)
                        for X, Yo, kk, ss, pp, dd in zip(shape, ygrid, k, s, p, d))
        dense = F.conv_transpose3d(D, W, bias, stride=s, padding=p, output_padding=out_pad, dilation=d)
        assert torch.equal(out.coords.cpu(), x.coords)
        back = (2, 3, 4, 0, 1)
    else:
        W = torch_conv_weight(layer).requires_grad_(True)
        if kind == "subm":
            dense = F.conv3d(D, W, bias, padding=1)
            assert torch.equal(out.coords.cpu(), x.coords)
        else:
            dense = F.conv3d(D, W, bias, stride=s, padding=p, dilation=d)
            sites, grid = expected_strided_sites(x.coords, B, shape, k, s, p, d)
            assert tuple(out.spatial_shape) == grid == conv_out_shape(shape, k, s, p, d)
            assert torch.equal(sort_rows(out.coords.cpu()), sites)
        back = (2, 3, 4, 1, 0)
    ref = dense_at(dense, out.coords.cpu())
    (ref * up).sum().backward()
    assert_close(out.feats.cpu(), ref, f64, "forward")
    assert_close(feats.grad.cpu(), dense_at(D.grad, xin.coords), f64, "input gradient")
    assert_close(dl.weight.grad.cpu(), W.grad.permute(*back), f64, "weight gradient")
    assert_close(dl.bias.grad.cpu(), bias.grad, f64, "bias gradient")


# ------------------------------------------------------------------------------------------------------------
# Convolutions, operator level: channel counts, tile edges, alignment, zero sizes
# ------------------------------------------------------------------------------------------------------------

# Channel pairs: 1, odd, multiples of 8 but not 16 (the WMMA kernel's 16-byte vector loads), several 32-channel
# steps (its K tile), several 64-column tiles, and the sizes around the automatic choice's thresholds.
CHANNELS = [(1, 1), (3, 5), (8, 8), (8, 13), (13, 8), (16, 16), (24, 40), (33, 65), (64, 64), (128, 128), (130, 33)]


@pytest.mark.parametrize("kind", ["subm", "strided", "inverse"])
@pytest.mark.parametrize("cin,cout", CHANNELS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_conv_op_channels(dtype, cin, cout, kind, algo):
    seed = seed_of((cin, cout, kind))
    _, nbr, nbr_t, n_in = op_maps(kind, seed)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_in, cin, generator=g, dtype=f64)
    weight = torch.randn(nbr.shape[0], cin, cout, generator=g, dtype=f64) / (cin ** 0.5)
    bias = torch.randn(cout, generator=g, dtype=f64)
    check_conv_op(dtype, feats, weight, bias if cout % 2 else None, nbr, nbr_t, what=f"{kind} {cin}->{cout}")


@pytest.mark.parametrize("n_out", [1, 63, 64, 65, 127, 1000, 5000])
@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_conv_op_tile_edges_random_map(dtype, n_out, algo):
    """Forward and weight gradient on random maps (rows may repeat an input): output counts around the fused
    kernels' 64-row tiles and the weight gradient's 1,024-row chunks."""
    K, cin, cout, n_in = 9, 24, 40, 300
    nbr = random_map(K, n_out, n_in, seed=n_out)
    g = torch.Generator().manual_seed(n_out)
    feats = rounded(torch.randn(n_in, cin, generator=g, dtype=f64), dtype)
    weight = rounded(torch.randn(K, cin, cout, generator=g, dtype=f64) / 5, dtype)
    bias = rounded(torch.randn(cout, generator=g, dtype=f64), dtype)
    dummy_t = torch.full((K, n_in), -1, dtype=torch.int32)  # only backward reads nbr_t
    got = ops.sparse_conv(dev(feats, dtype), dev(weight, dtype), dev(bias, dtype), dev(nbr), dev(dummy_t))
    ref = ops.sparse_conv(feats, weight, bias, nbr, dummy_t)
    S = ops.sparse_conv(feats.abs(), weight.abs(), bias.abs(), nbr, dummy_t)
    check_result(got, ref, S, K * cin + 1, dtype, "forward", K + 1)
    go = upstream((n_out, cout), dtype, n_out)
    got = ops.sparse_conv_weight_grad(dev(feats, dtype), dev(go, dtype), dev(nbr))
    ref = ops.sparse_conv_weight_grad(feats, go, nbr)
    S = ops.sparse_conv_weight_grad(feats.abs(), go.abs(), nbr)
    check_result(got, ref, S, n_out, dtype, "weight gradient")


def _misaligned(t):
    """The same values at a data pointer 2 bytes past an aligned one (contiguous, as the checks require)."""
    buf = torch.zeros(t.numel() + 8, dtype=t.dtype, device=t.device)
    v = buf[1:1 + t.numel()].view(t.shape)
    v.copy_(t)
    assert v.is_contiguous() and v.data_ptr() % 16 != 0
    return v


@pytest.mark.parametrize("which", ["feats", "weight", "both"])
@pytest.mark.parametrize("dtype", [f16, bf16, f32], ids=dname)
def test_conv_op_misaligned_pointers(dtype, which, algo):
    """Channel counts that allow 16-byte vector loads, but data pointers that do not: the kernels must fall back
    to element loads (a misaligned vector load is an illegal address)."""
    _, nbr, _, n = op_maps("subm", 3)
    g = torch.Generator().manual_seed(3)
    feats = rounded(torch.randn(n, 16, generator=g, dtype=f64), dtype)
    weight = rounded(torch.randn(27, 16, 24, generator=g, dtype=f64) / 4, dtype)
    f, w = dev(feats, dtype), dev(weight, dtype)
    if which in ("feats", "both"):
        f = _misaligned(f)
    if which in ("weight", "both"):
        w = _misaligned(w)
    got = ops.sparse_conv(f, w, None, dev(nbr), None)
    check_result(got, ops.sparse_conv(feats, weight, None, nbr, None),
                 ops.sparse_conv(feats.abs(), weight.abs(), None, nbr, None), 27 * 16, dtype, "forward", 28)
    go = upstream((n, 24), dtype, 5)
    gw = ops.sparse_conv_weight_grad(f, _misaligned(dev(go, dtype)) if which == "both" else dev(go, dtype), dev(nbr))
    check_result(gw, ops.sparse_conv_weight_grad(feats, go, nbr),
                 ops.sparse_conv_weight_grad(feats.abs(), go.abs(), nbr), n, dtype, "weight gradient")


def test_conv_op_zero_sizes(algo):
    """Empty inputs, outputs, kernels and channels: the CPU's results (zeros / bias rows), no launch errors."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5, 3, generator=g, dtype=f64)
    w = torch.randn(27, 3, 4, generator=g, dtype=f64)
    b = torch.randn(4, generator=g, dtype=f64)
    nbr = random_map(27, 4, 5, seed=1)
    nbr_t = torch.full((27, 5), -1, dtype=torch.int32)
    cases = {
        "no inputs": (torch.zeros(0, 3, dtype=f64), w, b, torch.full((27, 4), -1, dtype=torch.int32),
                      torch.zeros(27, 0, dtype=torch.int32)),
        "no outputs": (f, w, b, torch.zeros(27, 0, dtype=torch.int32), nbr_t),
        "no offsets": (f, torch.zeros(0, 3, 4, dtype=f64), b, torch.zeros(0, 4, dtype=torch.int32),
                       torch.zeros(0, 5, dtype=torch.int32)),
        "no input channels": (torch.zeros(5, 0, dtype=f64), torch.zeros(27, 0, 4, dtype=f64), b, nbr, nbr_t),
        "no output channels": (f, torch.zeros(27, 3, 0, dtype=f64), None, nbr, nbr_t),
    }
    for name, args in cases.items():
        got = ops.sparse_conv(*(dev(a) for a in args))
        ref = ops.sparse_conv(*args)
        assert got.shape == ref.shape, name
        torch.testing.assert_close(got.cpu(), ref, rtol=0, atol=0, msg=name)
    # Weight gradients of empty problems are zeros. (The CPU kernel is not called for K, Cin or Cout = 0: it
    # divides by K * Cin * Cout.)
    wg = {
        "no outputs": (f, torch.zeros(0, 4, dtype=f64), torch.zeros(27, 0, dtype=torch.int32), (27, 3, 4)),
        "no offsets": (f, torch.randn(4, 4, dtype=f64), torch.zeros(0, 4, dtype=torch.int32), (0, 3, 4)),
        "no input channels": (torch.zeros(5, 0, dtype=f64), torch.randn(4, 4, dtype=f64), nbr, (27, 0, 4)),
        "no output channels": (f, torch.zeros(4, 0, dtype=f64), nbr, (27, 3, 0)),
    }
    for name, (a, go, m, shape) in wg.items():
        if EMULATED:  # the CPU kernel would be called: it stops the process (SIGFPE) on these
            break
        got = ops.sparse_conv_weight_grad(dev(a), dev(go), dev(m))
        assert tuple(got.shape) == shape and not got.cpu().any(), name
    ref = ops.sparse_conv_weight_grad(f, torch.randn(4, 4, dtype=f64), torch.full((27, 4), -1, dtype=torch.int32))
    assert not ref.any()


@needs_gpu
@pytest.mark.parametrize("path", ["fused", "pools"])
def test_out_of_range_map_entries_are_skipped_without_checks(path, monkeypatch):
    """The sync-free kernels (fused convolution, pooling) treat map entries >= n_in as absent unless
    SPARSECONV_CUDA_CHECKS=1 (then they raise the CPU's error: see test_bad_inputs_raise_like_cpu)."""
    monkeypatch.setenv("SPARSECONV_CUDA_ALGO", "fused")
    monkeypatch.delenv("SPARSECONV_CUDA_CHECKS", raising=False)
    n = 40
    nbr = random_map(8, 30, n, seed=3)
    bad = nbr.clone()
    bad[2, 5], bad[7, 29], bad[0, 0] = n, n + 1000, 2**31 - 1
    clean = torch.where(bad >= n, torch.full_like(bad, -1), bad)
    feats = torch.randn(n, 6, dtype=f64)
    nbr_t = torch.full((8, n), -1, dtype=torch.int32)
    if path == "fused":
        w = torch.randn(8, 6, 5, dtype=f64)
        got = ops.sparse_conv(dev(feats), dev(w), None, dev(bad), dev(nbr_t))
        torch.testing.assert_close(got.cpu(), ops.sparse_conv(feats, w, None, clean, nbr_t), rtol=1e-12, atol=1e-12)
        got = ops.sparse_conv_weight_grad(dev(feats), dev(torch.ones(30, 5, dtype=f64)), dev(bad))
        ref = ops.sparse_conv_weight_grad(feats, torch.ones(30, 5, dtype=f64), clean)
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-12, atol=1e-12)
    else:
        out, arg = ops.sparse_max_pool(dev(feats), dev(bad), dev(nbr_t))
        ref, rarg = ops.sparse_max_pool(feats, clean, nbr_t)
        assert torch.equal(out.cpu(), ref) and torch.equal(arg.cpu(), rarg)


@needs_gpu
def test_tf32_only_when_allowed(monkeypatch):
    """float32 through cuBLAS (gemm path) is IEEE float32 under precision 'highest' (TF32 would be ~1e-3 off)."""
    monkeypatch.setenv("SPARSECONV_CUDA_ALGO", "gemm")
    _, nbr, _, n = op_maps("subm", 7)
    g = torch.Generator().manual_seed(7)
    feats, weight = torch.randn(n, 128, generator=g, dtype=f64), torch.randn(27, 128, 64, generator=g, dtype=f64)
    ref = ops.sparse_conv(rounded(feats, f32), rounded(weight, f32), None, nbr, None)
    got = ops.sparse_conv(dev(feats, f32), dev(weight, f32), None, dev(nbr), None)
    assert rel_l2(got, ref) < 5e-6
    old = _set_numerics(("high", False, False))  # TF32 allowed: results may lose precision, must stay sane
    try:
        loose = ops.sparse_conv(dev(feats, f32), dev(weight, f32), None, dev(nbr), None)
    finally:
        _set_numerics(old)
    assert rel_l2(loose, ref) < 1e-2
    print(f"relative L2 error: highest {rel_l2(got, ref):.2e}, high (TF32 allowed) {rel_l2(loose, ref):.2e}")


# ------------------------------------------------------------------------------------------------------------
# Which path runs: the environment variable really switches, and what the automatic choice picks
# ------------------------------------------------------------------------------------------------------------


def _conv_fwd_bwd(dtype, cin, cout, seed=3):
    x = make_sparse(2, 10, 0.3, cin, f64, seed=seed)
    nbr = dev(ops.build_subm_map(x.coords, [3, 3, 3], [1, 1, 1]))
    f = dev(x.feats, dtype).requires_grad_(True)
    w = dev(torch.randn(27, cin, cout, dtype=f64) / 8, dtype).requires_grad_(True)

    def fn():
        out = sparseconv.ops.sparse_conv(f, w, None, nbr, None)
        out.backward(torch.ones_like(out))

    return fn, f, w, nbr


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_algo_env_var_selects_the_path(dtype, monkeypatch):
    fn, *_ = _conv_fwd_bwd(dtype, 16, 24)
    major = torch.cuda.get_device_capability()[0]
    fused = "conv_fused_wmma_kernel" if dtype in (f16, bf16) and major >= 8 else "conv_fused_simt_kernel"
    for path in ("gemm", "fused"):
        monkeypatch.setenv("SPARSECONV_CUDA_ALGO", path)
        fn()  # warm-up outside the profiler
        cpu, kernels = profiled(fn)
        if path == "gemm":
            assert uses_mm(cpu), f"gemm path forced, but no aten::mm call: {sorted(cpu)}"
        else:
            assert not uses_mm(cpu), "fused path forced, but cuBLAS (aten::mm) was called"
        if not kernels:
            print(f"{path}: the profiler recorded no GPU kernels (CUPTI unavailable?); checked aten::mm only")
            continue
        has = lambda s: any(s in k for k in kernels)
        if path == "gemm":
            assert has("gather_rows_kernel") and not has("conv_fused_") and not has("wgrad_fused_kernel"), kernels
        else:
            assert has(fused) and has("wgrad_fused_kernel") and not has("gather_rows_kernel"), kernels
    monkeypatch.setenv("SPARSECONV_CUDA_ALGO", "bogus")
    with pytest.raises(ValueError, match="SPARSECONV_CUDA_ALGO"):
        fn()


@needs_gpu
def test_auto_path_choice_report(monkeypatch):
    """What the automatic choice picks (printed; see -rA), and that it picks exactly one path each time."""
    monkeypatch.delenv("SPARSECONV_CUDA_ALGO", raising=False)
    lines = []
    for dtype in (f32, f16):
        for cin, cout in [(4, 4), (16, 32), (32, 64), (64, 64), (96, 96), (128, 128), (160, 160)]:
            fn, f, w, nbr = _conv_fwd_bwd(dtype, cin, cout)
            with torch.no_grad():
                fwd = lambda: ops.sparse_conv(f.detach(), w.detach(), None, nbr, None)
                go = torch.ones(nbr.shape[1], cout, device=DEV, dtype=dtype)
                wg = lambda: ops.sparse_conv_weight_grad(f.detach(), go, nbr)
                fwd(), wg()
                pf, pw = uses_mm(profiled(fwd)[0]), uses_mm(profiled(wg)[0])
            lines.append(f"{dname(dtype):8s} {cin:4d} -> {cout:4d}: forward {'gemm' if pf else 'fused'}, "
                         f"weight gradient {'gemm' if pw else 'fused'}")
    print("automatic path choice:\n  " + "\n  ".join(lines))


# ------------------------------------------------------------------------------------------------------------
# gradcheck (float64) on the device
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["subm", "conv", "inverse"])
def test_gradcheck_layers(kind, algo):
    x = to_dev(make_sparse(2, 5, None, 2, f64, seed=7, n=12))
    torch.manual_seed(1)
    if kind == "subm":
        layer = snn.SubMConv3d(2, 3, 3)
    elif kind == "conv":
        layer = snn.SparseConv3d(2, 3, 3, stride=2, padding=1)
    else:
        down = snn.SparseConv3d(2, 2, 2, stride=2, indice_key="g").to(f64).to(DEV)
        with torch.no_grad():
            x = down(x)
        layer = snn.SparseInverseConv3d(2, 3, 2, indice_key="g")
    layer = layer.to(f64).to(DEV)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    feats = x.feats.detach().clone().requires_grad_(True)

    def f(feats, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x.replace(feats),)).feats

    assert torch.autograd.gradcheck(f, (feats, w, b), eps=1e-6, atol=1e-7, rtol=1e-5, nondet_tol=1e-12)


def test_gradcheck_op_hand_made_map(algo):
    """sparse_conv on a hand-made map with rows that read nothing, against an explicit loop, then gradcheck."""
    nbr = torch.tensor([[0, -1, 2, -1], [1, 3, -1, -1], [-1, 0, 4, -1]], dtype=torch.int32)
    nbr_t = ops.invert_map(nbr, 5)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 2, generator=g, dtype=f64)
    weight = torch.randn(3, 2, 3, generator=g, dtype=f64)
    bias = torch.randn(3, generator=g, dtype=f64)
    ref = conv_by_map(feats, weight, bias, nbr)
    nd, ntd = dev(nbr), dev(nbr_t)
    args = tuple(dev(a).requires_grad_(True) for a in (feats, weight, bias))

    def f(a, b, c):
        return sparseconv.ops.sparse_conv(a, b, c, nd, ntd)

    torch.testing.assert_close(f(*args).detach().cpu(), ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5, nondet_tol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: f(a, b, None), args[:2], eps=1e-6, atol=1e-7, rtol=1e-5,
                                    nondet_tol=1e-12)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_gradcheck_pools(pool):
    x = make_sparse(2, 6, 0.4, 3, f64, seed=9)
    _, snbr = ops.build_strided_map(x.coords, [6, 6, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    snt = ops.invert_map(snbr, x.coords.shape[0])
    nd, ntd = dev(snbr), dev(snt)
    fn = (lambda f: sparseconv.ops.sparse_max_pool(f, nd, ntd)[0]) if pool == "max" else \
        (lambda f: sparseconv.ops.sparse_avg_pool(f, nd, ntd))
    assert torch.autograd.gradcheck(fn, (dev(x.feats).requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# Pooling, voxelize, top-k, dense bridges, global pooling, models
# ------------------------------------------------------------------------------------------------------------

POOL_CASES = [(2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 1, 1), (2, 1, 0, 2), ((3, 2, 1), (2, 1, 1), (1, 0, 0), 1)]


@pytest.mark.parametrize("dtype", [f64, f32], ids=dname)
@pytest.mark.parametrize("pool", [snn.SparseMaxPool3d, snn.SparseAvgPool3d], ids=lambda p: p.__name__)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_layers_match_cpu(case, pool, dtype):
    k, s, p, d = case
    x = make_sparse(2, 9, 0.2, 5, dtype, seed=seed_of(case))
    compare_cpu_cuda(lambda: pool(k, s, p, d), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_pool_ops_match_float64_cpu(dtype):
    """Max pooling is exact in every dtype (value and argmax, ties resolved alike); average pooling and both
    backward passes within the rounding bound."""
    x = make_sparse(2, 9, 0.35, 6, f64, seed=8)
    n = x.coords.shape[0]
    _, snbr = ops.build_strided_map(x.coords, [9, 9, 9], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    snt = ops.invert_map(snbr, n)
    K, M = snbr.shape
    fr = rounded(x.feats, dtype)
    nd, ntd = dev(snbr), dev(snt)
    out, arg = ops.sparse_max_pool(dev(fr, dtype), nd, ntd)
    ref, rarg = ops.sparse_max_pool(fr, snbr, snt)
    assert out.dtype == dtype and torch.equal(arg.cpu(), rarg) and torch.equal(out.cpu().double(), ref)
    go = upstream((M, 6), dtype, 1)
    check_result(ops.sparse_max_pool_backward(dev(go, dtype), arg, ntd),
                 ops.sparse_max_pool_backward(go, rarg, snt), ops.sparse_max_pool_backward(go.abs(), rarg, snt), K,
                 dtype, "max-pool backward")
    check_result(ops.sparse_avg_pool(dev(fr, dtype), nd, ntd), ops.sparse_avg_pool(fr, snbr, snt),
                 ops.sparse_avg_pool(fr.abs(), snbr, snt), K + 1, dtype, "avg-pool forward")
    check_result(ops.sparse_avg_pool_backward(dev(go, dtype), nd, ntd), ops.sparse_avg_pool_backward(go, snbr, snt),
                 ops.sparse_avg_pool_backward(go.abs(), snbr, snt), K + 1, dtype, "avg-pool backward")


def test_max_pool_argmax_exact_and_nan():
    x = make_sparse(2, 8, 0.3, 4, f32, seed=4)
    x.feats[3, 1] = float("nan")
    _, nbr = ops.build_strided_map(x.coords, [8, 8, 8], [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1])
    nt = ops.invert_map(nbr, x.coords.shape[0])
    out, arg = ops.sparse_max_pool(x.feats, nbr, nt)
    out_c, arg_c = ops.sparse_max_pool(dev(x.feats), dev(nbr), dev(nt))
    assert torch.equal(arg_c.cpu(), arg)
    assert torch.isnan(out_c).any()
    torch.testing.assert_close(out_c.cpu(), out, rtol=0, atol=0, equal_nan=True)


def test_pool_zero_sizes():
    f = torch.randn(5, 3, dtype=f64)
    nt = torch.full((8, 5), -1, dtype=torch.int32)
    cases = [
        (ops.sparse_max_pool, (f, torch.zeros(8, 0, dtype=torch.int32), nt)),
        (ops.sparse_max_pool, (torch.zeros(5, 0, dtype=f64), torch.zeros(8, 2, dtype=torch.int32), nt)),
        (ops.sparse_max_pool, (f, torch.zeros(0, 2, dtype=torch.int32), torch.zeros(0, 5, dtype=torch.int32))),
        (ops.sparse_avg_pool, (f, torch.zeros(0, 2, dtype=torch.int32), torch.zeros(0, 5, dtype=torch.int32))),
        (ops.sparse_avg_pool, (f, torch.zeros(8, 0, dtype=torch.int32), nt)),
        (ops.sparse_avg_pool_backward, (torch.zeros(0, 3, dtype=f64), torch.zeros(8, 0, dtype=torch.int32), nt)),
        (ops.sparse_max_pool_backward, (torch.zeros(0, 3, dtype=f64), torch.zeros(0, 3, dtype=torch.int32), nt)),
        (ops.sparse_max_pool_backward, (torch.zeros(0, 3, dtype=f64), torch.zeros(0, 3, dtype=torch.int32),
                                        torch.zeros(8, 0, dtype=torch.int32))),
    ]
    for op, args in cases:
        got, ref = op(*(dev(a) for a in args)), op(*args)
        got, ref = (got if isinstance(got, tuple) else (got,)), (ref if isinstance(ref, tuple) else (ref,))
        for a, b in zip(got, ref):
            assert a.shape == b.shape and torch.equal(a.cpu(), b), op


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_voxelize_matches_cpu(dtype):
    from test_voxelize import reference

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(5000, 3, generator=g, dtype=f64) * torch.tensor([40.0, 30.0, 8.0]) - 3
    pts[:300] = torch.randint(-12, 160, (300, 3), generator=g).double() * 0.25  # exactly on voxel faces
    pts = pts.to(dtype)
    feats = torch.randn(5000, 2, generator=g, dtype=f64).to(dtype)
    tol = {f64: 1e-12, f32: 1e-5, f16: 2e-2, bf16: 8e-2}[dtype]  # torch's scatter sums (atomics on the GPU)
    for reduce in ("mean", "sum", "max"):
        x, p2v = sparseconv.voxelize(pts, feats, voxel_size=(0.5, 0.5, 0.25), reduce=reduce)
        xc, p2vc = sparseconv.voxelize(dev(pts), dev(feats), voxel_size=(0.5, 0.5, 0.25), reduce=reduce)
        assert torch.equal(xc.coords.cpu(), x.coords) and torch.equal(p2vc.cpu(), p2v), reduce
        assert xc.spatial_shape == x.spatial_shape and xc.feats.dtype == dtype
        torch.testing.assert_close(xc.feats.cpu().double(), x.feats.double(), rtol=tol, atol=tol)
    origin = pts.double().amin(0).tolist()
    bc, _, bp2v = reference(pts, None, (0.5, 0.5, 0.25), origin, "mean")
    assert torch.equal(xc.coords[:, 1:].cpu(), bc) and torch.equal(p2vc.cpu(), bp2v)
    back = sparseconv.devoxelize(xc.feats, p2vc)
    assert back.device.type == DEV.type and back.shape == (5000, 2)


def test_voxelize_many_points_per_voxel_and_empty():
    """200,000 points in 27 voxels: heavy contention on few hash slots; then no points at all."""
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(200_000, 3, generator=g, dtype=f64) * 3
    a, b = ops.voxelize(pts, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]), ops.voxelize(dev(pts), [1.0, 1.0, 1.0], [0.0] * 3)
    assert a[0].shape[0] == 27 and torch.equal(b[0].cpu(), a[0]) and torch.equal(b[1].cpu(), a[1])
    e = ops.voxelize(dev(torch.zeros(0, 3)), [1.0, 1.0, 1.0], [0.0] * 3)
    assert tuple(e[0].shape) == (0, 4) and tuple(e[1].shape) == (0,)


def test_topk_dense_bridges_global_pool_collate():
    x = make_sparse(3, 10, 0.2, 4, f64, seed=12)
    xc = to_dev(x)
    topk = snn.SparseTopK(max_active=40)
    assert torch.equal(topk(xc).coords.cpu(), topk(x).coords)
    assert torch.equal(xc.dense().cpu(), x.dense())
    back = sparseconv.SparseTensor.from_dense(xc.dense())
    assert torch.equal(back.coords.cpu(), sparseconv.SparseTensor.from_dense(x.dense()).coords)
    assert torch.equal(snn.ToDense((8, 8, 8))(xc).cpu(), snn.ToDense((8, 8, 8))(x))
    for pool in (snn.GlobalMaxPool(), snn.GlobalAvgPool()):
        assert_close(pool(xc).cpu(), pool(x), f64)
    both = sparseconv.sparse_collate([xc, xc])
    assert both.feats.device.type == DEV.type and both.batch_size == 6


def test_unet_matches_cpu(algo):
    from sparseconv.models import SparseUNet

    x = make_sparse(2, 16, 0.05, 4, f64, seed=6)
    compare_cpu_cuda(lambda: SparseUNet(4, 3, channels=(8, 16)), x, f64)


@needs_gpu
def test_compile_fullgraph_on_cuda():
    """A SubM / BatchNorm / ReLU net, maps built before the compiled region, in one graph (fake kernels on CUDA
    tensors, AOT autograd); backend aot_eager keeps it fast (inductor's code generation is torch's own)."""
    from sparseconv.kmap import subm_map

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = snn.SparseSequential(snn.SubMConv3d(4, 8, 3), snn.SparseBatchNorm(8), snn.SparseReLU(),
                               snn.SubMConv3d(8, 4, 3)).double().to(DEV)
    ref = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    x = to_dev(make_sparse(2, 12, 0.2, 4, f64, seed=0))
    subm_map(x, (3, 3, 3), (1, 1, 1))
    outs = []
    for model in (ref, compiled):
        feats = x.feats.detach().clone().requires_grad_(True)
        out = model(x.replace(feats)).feats
        out.square().sum().backward()
        outs.append((out.detach(), feats.grad, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-10, atol=1e-10)
    for a, b in zip(outs[1][2], outs[0][2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------------------
# Bad inputs: the CPU's exception type and first line; mixed devices refused
# ------------------------------------------------------------------------------------------------------------


def _outcome(fn):
    """(exception type, first line of its message), or (None, None) when fn() returns."""
    try:
        fn()
    except Exception as e:
        return type(e), (str(e).strip().splitlines() or [""])[0]
    return None, None


def _bad_cases():
    c = random_coords(2, 6, 0.3, seed=1)
    n = c.shape[0]
    g = torch.Generator().manual_seed(5)
    f = random_feats(n, 3, f32, 2)
    nbr = ops.build_subm_map(c, [3, 3, 3], [1, 1, 1])
    _, snbr = ops.build_strided_map(c, [6, 6, 6], [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1])
    snt = ops.invert_map(snbr, n)
    M = snbr.shape[1]
    w = torch.randn(27, 3, 4, generator=g)
    w8 = torch.randn(8, 3, 4, generator=g)
    go = torch.randn(n, 4, generator=g)
    gp = torch.randn(M, 3, generator=g)
    arg = ops.sparse_max_pool(f, snbr, snt)[1]
    bad_nbr = nbr.clone()
    bad_nbr[5, 3] = n + 2
    bad_snbr = snbr.clone()
    bad_snbr[0, 0] = n + 1
    pts = torch.rand(20, 3, dtype=f64) * 4
    nan_pts = pts.clone()
    nan_pts[11, 1] = float("nan")
    dup, neg, keyr, batr, outs = c.clone(), c.clone(), c.clone(), c.clone(), c.clone()
    dup[7] = dup[3]
    neg[5, 2] = -1
    keyr[4, 1] = 1 << 17
    batr[6, 0] = 1 << 12
    outs[2, 3] = 6
    SC, SM, SB = ops.build_subm_map, ops.build_strided_map, ops.sparse_conv
    strided = lambda T, cc: SM(T(cc), [6, 6, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    return {
        "subm_coords_float": lambda T: SC(T(c.float()), [3, 3, 3], [1, 1, 1]),
        "subm_coords_Nx3": lambda T: SC(T(c[:, :3].contiguous()), [3, 3, 3], [1, 1, 1]),
        "subm_coords_noncontiguous": lambda T: SC(T(c.t().contiguous().t()), [3, 3, 3], [1, 1, 1]),
        "subm_kernel_0": lambda T: SC(T(c), [0, 3, 3], [1, 1, 1]),
        "subm_kernel_16": lambda T: SC(T(c), [3, 16, 3], [1, 1, 1]),
        "subm_kernel_2_values": lambda T: SC(T(c), [3, 3], [1, 1, 1]),
        "subm_dilation_0": lambda T: SC(T(c), [3, 3, 3], [1, 0, 1]),
        "subm_duplicate": lambda T: SC(T(dup), [3, 3, 3], [1, 1, 1]),
        "subm_negative": lambda T: SC(T(neg), [3, 3, 3], [1, 1, 1]),
        "subm_key_range": lambda T: SC(T(keyr), [3, 3, 3], [1, 1, 1]),
        "subm_batch_range": lambda T: SC(T(batr), [3, 3, 3], [1, 1, 1]),
        "strided_duplicate": lambda T: strided(T, dup),
        "strided_negative": lambda T: strided(T, neg),
        "strided_key_range": lambda T: strided(T, keyr),
        "strided_batch_range": lambda T: strided(T, batr),
        "strided_outside_shape": lambda T: strided(T, outs),
        "strided_shape_0": lambda T: SM(T(c), [0, 6, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1]),
        "strided_kernel_too_big": lambda T: SM(T(c), [6, 6, 6], [9, 3, 3], [1, 1, 1], [0, 0, 0], [1, 1, 1]),
        "strided_stride_0": lambda T: SM(T(c), [6, 6, 6], [3, 3, 3], [2, 0, 2], [1, 1, 1], [1, 1, 1]),
        "strided_padding_negative": lambda T: SM(T(c), [6, 6, 6], [3, 3, 3], [2, 2, 2], [1, -1, 1], [1, 1, 1]),
        "strided_grid_past_key_range": lambda T: SM(T(torch.tensor([[0, 131071, 0, 0]], dtype=torch.int32)),
                                                    [131072, 8, 8], [3, 3, 3], [1, 1, 1], [2, 2, 2], [1, 1, 1]),
        "invert_negative_n_in": lambda T: ops.invert_map(T(snbr), -1),
        "invert_entry_past_n_in": lambda T: ops.invert_map(T(snbr), 1),
        "invert_float_map": lambda T: ops.invert_map(T(snbr.float()), n),
        "invert_1d_map": lambda T: ops.invert_map(T(snbr[0].contiguous()), n),
        "conv_feats_int": lambda T: SB(T(f.int()), T(w), None, T(nbr), None),
        "conv_feats_1d": lambda T: SB(T(f[:, 0].contiguous()), T(w), None, T(nbr), None),
        "conv_feats_noncontiguous": lambda T: SB(T(torch.randn(3, n).t()), T(w), None, T(nbr), None),
        "conv_weight_dtype": lambda T: SB(T(f), T(w.double()), None, T(nbr), None),
        "conv_weight_offsets": lambda T: SB(T(f), T(w8), None, T(nbr), None),
        "conv_weight_cin": lambda T: SB(T(f), T(torch.randn(27, 2, 4)), None, T(nbr), None),
        "conv_weight_2d": lambda T: SB(T(f), T(w[0].contiguous()), None, T(nbr), None),
        "conv_bias_shape": lambda T: SB(T(f), T(w), T(torch.randn(5)), T(nbr), None),
        "conv_bias_dtype": lambda T: SB(T(f), T(w), T(torch.randn(4, dtype=f64)), T(nbr), None),
        "conv_nbr_t_shape": lambda T: SB(T(f), T(w8), None, T(snbr), T(snt[:, :-1].contiguous())),
        "conv_nbr_t_missing": lambda T: SB(T(f), T(w8), None, T(snbr), None),
        "conv_nbr_float": lambda T: SB(T(f), T(w), None, T(nbr.float()), None),
        "conv_map_entry_past_inputs": lambda T: SB(T(f), T(w), None, T(bad_nbr), None),
        "wgrad_rows": lambda T: ops.sparse_conv_weight_grad(T(f), T(go[:-1].contiguous()), T(nbr)),
        "wgrad_dtype": lambda T: ops.sparse_conv_weight_grad(T(f), T(go.double()), T(nbr)),
        "wgrad_feats_int": lambda T: ops.sparse_conv_weight_grad(T(f.int()), T(go), T(nbr)),
        "wgrad_map_entry_past_inputs": lambda T: ops.sparse_conv_weight_grad(T(f), T(go), T(bad_nbr)),
        "maxpool_nbr_t_shape": lambda T: ops.sparse_max_pool(T(f), T(snbr), T(snt[:, 1:].contiguous())),
        "maxpool_feats_int": lambda T: ops.sparse_max_pool(T(f.int()), T(snbr), T(snt)),
        "maxpool_map_entry_past_inputs": lambda T: ops.sparse_max_pool(T(f), T(bad_snbr), T(snt)),
        "avgpool_map_entry_past_inputs": lambda T: ops.sparse_avg_pool(T(f), T(bad_snbr), T(snt)),
        "maxpool_backward_argmax_shape": lambda T: ops.sparse_max_pool_backward(T(gp), T(arg[:-1].contiguous()),
                                                                                T(snt)),
        "maxpool_backward_argmax_dtype": lambda T: ops.sparse_max_pool_backward(T(gp), T(arg.long()), T(snt)),
        "avgpool_backward_mismatch": lambda T: ops.sparse_avg_pool_backward(T(gp), T(snbr[:, :-1].contiguous()),
                                                                            T(snt)),
        "voxelize_int_points": lambda T: ops.voxelize(T(pts.int()), [1.0, 1.0, 1.0], [0.0] * 3),
        "voxelize_Px2": lambda T: ops.voxelize(T(pts[:, :2].contiguous()), [1.0, 1.0, 1.0], [0.0] * 3),
        "voxelize_size_0": lambda T: ops.voxelize(T(pts), [0.0, 1.0, 1.0], [0.0] * 3),
        "voxelize_size_inf": lambda T: ops.voxelize(T(pts), [1.0, float("inf"), 1.0], [0.0] * 3),
        "voxelize_size_2_values": lambda T: ops.voxelize(T(pts), [1.0, 1.0], [0.0] * 3),
        "voxelize_origin_nan": lambda T: ops.voxelize(T(pts), [1.0, 1.0, 1.0], [0.0, float("nan"), 0.0]),
        "voxelize_nan_point": lambda T: ops.voxelize(T(nan_pts), [0.1, 0.1, 0.1], [0.0] * 3),
        "voxelize_below_origin": lambda T: ops.voxelize(T(pts), [0.1, 0.1, 0.1], [1.0, 0.0, 0.0]),
        "voxelize_past_key_range": lambda T: ops.voxelize(T(pts * 1e5), [0.1, 0.1, 0.1], [0.0] * 3),
    }


BAD = sorted(_bad_cases())
BAD_PARAMS = [(name, path) for name in BAD for path in (("gemm", "fused") if name.startswith(("conv_", "wgrad_"))
                                                        else ("auto",))]


@pytest.mark.parametrize("name,path", BAD_PARAMS, ids=[f"{a}-{b}" for a, b in BAD_PARAMS])
def test_bad_inputs_raise_like_cpu(name, path, monkeypatch):
    set_algo(monkeypatch, path)
    monkeypatch.setenv("SPARSECONV_CUDA_CHECKS", "1")  # the sync-free kernels check map entries too
    case = _bad_cases()[name]
    cpu = _outcome(lambda: case(lambda t: t))
    assert cpu[0] is not None, "the CPU accepts this input: not a bad-input case"
    assert cpu[0] in (ValueError, TypeError), cpu
    got = _outcome(lambda: case(lambda t: t.to(DEV)))
    assert got == cpu


@needs_gpu
def test_mixed_devices_are_refused():
    """The dispatcher picks the CUDA kernel when any argument is on the GPU; a CPU tensor among them must be
    refused with a ValueError naming an argument, never dereferenced."""
    c = random_coords(1, 6, 0.3, seed=2)
    n = c.shape[0]
    f = random_feats(n, 2, f64, 1)
    nbr = ops.build_subm_map(c, [3, 3, 3], [1, 1, 1])
    _, snbr = ops.build_strided_map(c, [6, 6, 6], [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1])
    snt = ops.invert_map(snbr, n)
    w, w8, b = torch.randn(27, 2, 3, dtype=f64), torch.randn(8, 2, 3, dtype=f64), torch.randn(3, dtype=f64)
    go, gp = torch.randn(n, 3, dtype=f64), torch.randn(snbr.shape[1], 2, dtype=f64)
    arg = ops.sparse_max_pool(f, snbr, snt)[1]
    calls = [  # (op, args, index of the argument left on the CPU)
        (ops.sparse_conv, (f, w, b, nbr, None), 1), (ops.sparse_conv, (f, w, b, nbr, None), 2),
        (ops.sparse_conv, (f, w, b, nbr, None), 3), (ops.sparse_conv, (f, w8, None, snbr, snt), 4),
        (ops.sparse_conv, (f, w, b, nbr, None), 0),
        (ops.sparse_conv_weight_grad, (f, go, nbr), 1), (ops.sparse_conv_weight_grad, (f, go, nbr), 2),
        (ops.sparse_max_pool, (f, snbr, snt), 1), (ops.sparse_max_pool, (f, snbr, snt), 2),
        (ops.sparse_avg_pool, (f, snbr, snt), 1), (ops.sparse_avg_pool, (f, snbr, snt), 2),
        (ops.sparse_max_pool_backward, (gp, arg, snt), 1), (ops.sparse_max_pool_backward, (gp, arg, snt), 2),
        (ops.sparse_avg_pool_backward, (gp, snbr, snt), 1), (ops.sparse_avg_pool_backward, (gp, snbr, snt), 2),
    ]
    for op, args, i in calls:
        moved = [a if (j == i or a is None) else dev(a) for j, a in enumerate(args)]
        with pytest.raises(ValueError) as info:
            op(*moved)
        msg = str(info.value)
        assert re.match(r"(feats|weight|bias|nbr|nbr_t|grad_out|argmax): expected a tensor on", msg), (op, i, msg)


# ------------------------------------------------------------------------------------------------------------
# Non-default streams: every operator queued behind other work on a side stream
# ------------------------------------------------------------------------------------------------------------


def _stream_cases():
    x = make_sparse(2, 10, 0.3, 8, f32, seed=31)
    c, f = x.coords, x.feats
    n = c.shape[0]
    g = torch.Generator().manual_seed(31)
    nbr = ops.build_subm_map(c, [3, 3, 3], [1, 1, 1])
    _, snbr = ops.build_strided_map(c, [10, 10, 10], [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1])
    snt = ops.invert_map(snbr, n)
    M = snbr.shape[1]
    w, b = torch.randn(27, 8, 12, generator=g), torch.randn(12, generator=g)
    go, gp = torch.randn(n, 12, generator=g), torch.randn(M, 8, generator=g)
    arg = ops.sparse_max_pool(f, snbr, snt)[1]
    return {
        "build_subm_map": (ops.build_subm_map, (c, [3, 3, 3], [1, 1, 1])),
        "build_strided_map": (ops.build_strided_map, (c, [10, 10, 10], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])),
        "invert_map": (ops.invert_map, (snbr, n)),
        "sparse_conv": (ops.sparse_conv, (f, w, b, nbr, None)),
        "sparse_conv_f16": (ops.sparse_conv, (f.half(), w.half(), b.half(), nbr, None)),
        "sparse_conv_weight_grad": (ops.sparse_conv_weight_grad, (f, go, nbr)),
        "sparse_max_pool": (ops.sparse_max_pool, (f, snbr, snt)),
        "sparse_max_pool_backward": (ops.sparse_max_pool_backward, (gp, arg, snt)),
        "sparse_avg_pool": (ops.sparse_avg_pool, (f, snbr, snt)),
        "sparse_avg_pool_backward": (ops.sparse_avg_pool_backward, (gp, snbr, snt)),
        "voxelize": (ops.voxelize, (torch.rand(3000, 3, generator=g, dtype=f64) * 10, [1.0, 0.5, 1.0], [0.0] * 3)),
    }


STREAM_OPS = ("build_subm_map", "build_strided_map", "invert_map", "sparse_conv", "sparse_conv_f16",
              "sparse_conv_weight_grad", "sparse_max_pool", "sparse_max_pool_backward", "sparse_avg_pool",
              "sparse_avg_pool_backward", "voxelize")
STREAM_PARAMS = [(n, p) for n in STREAM_OPS for p in (("gemm", "fused") if n.startswith("sparse_conv") else ("auto",))]


@needs_gpu
@pytest.mark.parametrize("name,path", STREAM_PARAMS, ids=[f"{a}-{b}" for a, b in STREAM_PARAMS])
def test_operators_run_on_the_current_stream(name, path, monkeypatch):
    """Inputs are written on a side stream only after a ~20 ms sleep kernel there; an operator that launched on
    another stream, or read sizes back on another stream, would see zeros and return something else."""
    set_algo(monkeypatch, path)
    op, args = _stream_cases()[name]
    dargs = [dev(a) for a in args]
    ref = op(*dargs)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        staged = [torch.zeros_like(a) if isinstance(a, torch.Tensor) else a for a in dargs]
        torch.cuda._sleep(40_000_000)
        for st, a in zip(staged, dargs):
            if isinstance(a, torch.Tensor):
                st.copy_(a)
        got = op(*staged)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    got, ref = (got if isinstance(got, tuple) else (got,)), (ref if isinstance(ref, tuple) else (ref,))
    for a, b in zip(got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.is_floating_point():  # float atomics (fused weight gradient), cuBLAS per-stream choices: not bitwise
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(a, b)


@needs_gpu
def test_layer_forward_backward_on_a_side_stream(algo):
    x = to_dev(make_sparse(2, 12, 0.2, 8, f32, seed=3))
    torch.manual_seed(0)
    net = snn.SparseSequential(snn.SubMConv3d(8, 16, 3), snn.SparseReLU(),
                               snn.SparseConv3d(16, 16, 2, stride=2, indice_key="s"), snn.SubMConv3d(16, 16, 3),
                               snn.SparseInverseConv3d(16, 8, 2, indice_key="s"), snn.SparseMaxPool3d(2, 1)).to(DEV)
    ref = run(copy.deepcopy(net), x)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(20_000_000)
        got = run(copy.deepcopy(net), to_dev(sparseconv.SparseTensor(x.feats.cpu(), x.coords.cpu(), x.spatial_shape,
                                                                     x.batch_size)))
    torch.cuda.synchronize()
    torch.testing.assert_close(got[0].feats, ref[0].feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    """Tensors on cuda:1 while cuda:0 is current: each operator works on its inputs' device."""
    x = make_sparse(2, 8, 0.3, 4, f32, seed=1)
    c1, f1 = x.coords.to("cuda:1"), x.feats.to("cuda:1")
    nbr = ops.build_subm_map(c1, [3, 3, 3], [1, 1, 1])
    assert nbr.device == c1.device and torch.equal(nbr.cpu(), ops.build_subm_map(x.coords, [3, 3, 3], [1, 1, 1]))
    w = torch.randn(27, 4, 5)
    out = ops.sparse_conv(f1, w.to("cuda:1"), None, nbr, None)
    torch.testing.assert_close(out.cpu(), ops.sparse_conv(x.feats, w, None, nbr.cpu(), None), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# opcheck on the device, every operator
# ------------------------------------------------------------------------------------------------------------


def _opcheck_names():
    from test_opcheck import _cases

    return list(_cases())


@pytest.mark.parametrize("name", _opcheck_names())
def test_opcheck_on_device(name, monkeypatch):
    from test_opcheck import _cases
    from torch.library import opcheck

    monkeypatch.setenv("SPARSECONV_CUDA_ALGO", "fused" if "conv" in name else "auto")
    op, args = _cases()[name]
    moved = tuple(a.detach().to(DEV, copy=True).requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor)
                  else a for a in args)
    opcheck(op, moved)


def test_opcheck_covers_every_operator():
    from test_opcheck import _cases

    names = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("sparseconv::")}
    assert names == {op.__name__.split(".")[0] for op, _ in _cases().values()}


# ------------------------------------------------------------------------------------------------------------
# Autocast and GradScaler
# ------------------------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("dtype", [f16, bf16], ids=dname)
def test_autocast_output_dtypes(dtype):
    """Convolutions run in the autocast dtype, pooling in the dtype it is given, float64 is left alone, mixed
    input dtypes meet in the autocast dtype (and are an error outside autocast)."""
    x = to_dev(make_sparse(2, 12, 0.2, 8, f32, seed=9))
    torch.manual_seed(0)
    conv = snn.SubMConv3d(8, 16, 3).to(DEV)
    down = snn.SparseConv3d(16, 16, 2, stride=2, indice_key="d").to(DEV)
    feats = x.feats.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype):
        a = conv(x.replace(feats))
        b = down(a)
        pooled = snn.SparseMaxPool3d(2)(x)
        pooled_a = snn.SparseAvgPool3d(2)(a)
        up = snn.SparseInverseConv3d(16, 8, 2, indice_key="d").to(DEV)(b)
    assert a.feats.dtype == b.feats.dtype == up.feats.dtype == dtype
    assert pooled.feats.dtype == f32 and pooled_a.feats.dtype == dtype
    up.feats.float().sum().backward()
    assert feats.grad.dtype == f32 and conv.weight.grad.dtype == f32 and conv.bias.grad.dtype == f32
    with torch.autocast("cuda", dtype=dtype):
        x64 = x.replace(x.feats.double())
        assert copy.deepcopy(conv).double()(x64).feats.dtype == f64
        mixed = conv(x.replace(x.feats.to(dtype)))  # lower-precision features, float32 weights
    assert mixed.feats.dtype == dtype
    with pytest.raises(TypeError):
        conv(x.replace(x.feats.to(dtype)))


def _autocast_compare(make, dtype, tol, seed=3):
    """model under torch.autocast('cuda', dtype) against its float32 copy, same input: relative L2 errors of the
    outputs, of all parameter gradients together, of each parameter holding >= 5% of the gradient norm, and of
    the input gradient, against tol = (outputs, parameters, input)."""
    torch.manual_seed(seed)
    m = make().to(DEV)
    ref = copy.deepcopy(m)
    x = to_dev(make_sparse(4, 16, 0.1, 4, f32, seed=seed))
    feats = x.feats.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype):
        out = m(x.replace(feats))
    out = out if isinstance(out, torch.Tensor) else out.feats
    assert out.dtype == dtype
    out.float().square().sum().backward()
    feats_r = x.feats.clone().requires_grad_(True)
    expected = ref(x.replace(feats_r))
    expected = expected if isinstance(expected, torch.Tensor) else expected.feats
    expected.square().sum().backward()
    assert feats.grad.dtype == f32 and all(p.grad.dtype == f32 for p in m.parameters())
    grads = torch.cat([p.grad.flatten() for p in m.parameters()])
    grads_r = torch.cat([p.grad.flatten() for p in ref.parameters()])
    errors = {"outputs": rel_l2(out.float(), expected), "parameter gradients": rel_l2(grads, grads_r),
              "input gradient": rel_l2(feats.grad, feats_r.grad)}
    print(f"{dname(dtype)}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    for (k, v), t in zip(errors.items(), tol):
        assert v <= t, f"{k}: relative L2 {v:.3g} > {t:.3g}"
    for (name, p), q in zip(ref.named_parameters(), m.parameters()):
        if p.grad.norm() >= 0.05 * grads_r.norm():
            assert rel_l2(q.grad, p.grad) <= 3 * tol[1], (name, rel_l2(q.grad, p.grad))


@needs_gpu
@pytest.mark.parametrize("dtype", [f16, bf16], ids=dname)
def test_autocast_conv_net_close_to_float32(dtype, algo):
    def make():
        return snn.SparseSequential(
            snn.SubMConv3d(4, 16, 3), snn.SparseReLU(), snn.SparseConv3d(16, 32, 2, stride=2, indice_key="d"),
            snn.SparseReLU(), snn.SubMConv3d(32, 32, 3), snn.SparseReLU(),
            snn.SparseInverseConv3d(32, 16, 2, indice_key="d"), snn.SparseReLU(), snn.SubMConv3d(16, 3, 3))

    _autocast_compare(make, dtype, AUTOCAST_TOL["convs"][dtype])


@needs_gpu
@pytest.mark.parametrize("model", ["unet", "classifier"])
@pytest.mark.parametrize("dtype", [f16, bf16], ids=dname)
def test_autocast_models_close_to_float32(dtype, model):
    from sparseconv.models import SparseUNet, VoxelClassifier

    def make():
        if model == "unet":
            return SparseUNet(4, 3, channels=(8, 16))
        return VoxelClassifier(4, 6, 16, channels=(8, 16), dropout=0.0)

    _autocast_compare(make, dtype, AUTOCAST_TOL["models"][dtype])


@needs_gpu
def test_gradscaler_fp16_training_matches_float32():
    """fp16 autocast + torch.amp.GradScaler for 8 SGD steps of a small sparse net: no step skipped (the scale
    stays), float32 gradients, the loss goes down (a learnable target), and loss and parameters follow the float32
    run within 1% / 2%."""
    x = to_dev(make_sparse(2, 12, 0.25, 8, f32, seed=11))
    torch.manual_seed(0)
    net = snn.SparseSequential(snn.SubMConv3d(8, 16, 3), snn.SparseBatchNorm(16), snn.SparseReLU(),
                               snn.SparseConv3d(16, 16, 2, stride=2, indice_key="d"), snn.SparseReLU(),
                               snn.SparseInverseConv3d(16, 16, 2, indice_key="d"), snn.SubMConv3d(16, 4, 3)).to(DEV)
    ref = copy.deepcopy(net)
    target = (x.feats.cpu() @ torch.randn(8, 4, generator=torch.Generator().manual_seed(1))).argmax(1).to(DEV)
    runs = {}
    for name, model in (("amp", net), ("fp32", ref)):
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        scaler = torch.amp.GradScaler("cuda", init_scale=1024.0, growth_interval=1000, enabled=name == "amp")
        losses = []
        for _ in range(8):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=f16, enabled=name == "amp"):
                logits = model(x).feats
                loss = F.cross_entropy(logits.float(), target)
            if name == "amp":
                assert logits.dtype == f16
            scaler.scale(loss).backward()
            assert all(p.grad.dtype == f32 and torch.isfinite(p.grad).all() for p in model.parameters())
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
        runs[name] = (losses, scaler.get_scale() if name == "amp" else None)
    losses, scale = runs["amp"]
    assert scale == 1024.0, "a step was skipped (inf/NaN in the scaled float16 gradients)"
    assert losses[-1] <= 0.995 * losses[0], losses
    for a, b in zip(losses, runs["fp32"][0]):
        assert abs(a - b) <= 0.01 * abs(b), (losses, runs["fp32"][0])
    for (name, p), q in zip(ref.named_parameters(), net.parameters()):
        assert rel_l2(q, p) <= 0.02, name


# ------------------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------------------


def _det_net():
    torch.manual_seed(0)
    return snn.SparseSequential(snn.SubMConv3d(8, 16, 3), snn.SparseReLU(),
                                snn.SparseConv3d(16, 16, 3, stride=2, padding=1, indice_key="s"),
                                snn.SubMConv3d(16, 16, 3), snn.SparseInverseConv3d(16, 8, 3, indice_key="s"),
                                snn.SparseMaxPool3d(2, 1), snn.SparseAvgPool3d(2, 2)).to(DEV)


@pytest.mark.parametrize("mode", ["sparseconv", "torch"])
def test_deterministic_mode_bitwise_repeat(mode, algo, monkeypatch):
    """About 20,000 sites: the fused weight gradient then has many row chunks per element, which float atomics
    would add in a varying order."""
    x = to_dev(make_sparse(2, 32, 0.3, 8, f32, seed=10))
    if mode == "torch":
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # torch's rule for cuBLAS under this switch
    results = []
    for _ in range(2):
        model = _det_net()
        if mode == "sparseconv":
            sparseconv.set_deterministic(True)
        else:
            torch.use_deterministic_algorithms(True)
        try:
            out, gin, gp = run(model, x)
        finally:
            sparseconv.set_deterministic(False)
            torch.use_deterministic_algorithms(False)
        results.append([out.feats, gin] + gp)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_gpu
def test_deterministic_weight_gradient_avoids_atomics(monkeypatch):
    """In deterministic mode the fused weight gradient runs its atomic-free variant (by kernel name), and both
    variants stay within float32 summation error of the float64 result.

    Each element sums about 6,000 products here; two float32 summation orders differ by up to a few 1e-4 (the
    first H200 run: 82 of 3,456 elements past rtol = atol = 1e-5 between the variants, at most 4.1e-4), so the
    bound scales with sum |f| |g| of the element (16 float32 roundings of it), not with the result."""
    monkeypatch.setenv("SPARSECONV_CUDA_ALGO", "fused")
    x = make_sparse(2, 32, 0.3, 8, f64, seed=10)
    nbr_cpu = ops.build_subm_map(x.coords, [3, 3, 3], [1, 1, 1])
    nbr = dev(nbr_cpu)
    go64 = torch.randn(x.coords.shape[0], 16, dtype=f64)
    f, go = dev(x.feats, f32), dev(go64, f32)
    f_r, go_r = f.double().cpu(), go.double().cpu()  # the float32 inputs, exactly
    exact = ops.sparse_conv_weight_grad(f_r, go_r, nbr_cpu)
    tol = 2.0 ** -20 * ops.sparse_conv_weight_grad(f_r.abs(), go_r.abs(), nbr_cpu)
    fn = lambda: ops.sparse_conv_weight_grad(f, go, nbr)
    default = fn()
    sparseconv.set_deterministic(True)
    try:
        det = fn()
        assert torch.equal(det, fn())
        _, kernels_det = profiled(fn)
    finally:
        sparseconv.set_deterministic(False)
    _, kernels_default = profiled(fn)
    for name, got in (("deterministic", det), ("default", default)):
        err = (got.double().cpu() - exact).abs()
        assert bool((err <= tol).all()), (name, float((err - tol).max()), int((err > tol).sum()))

    def variants(kernels):
        names = [k for k in kernels if "wgrad_fused_kernel" in k]
        return names, {m.group(1) for k in names for m in [re.search(r"wgrad_fused_kernel<[^>]*?(true|false)\s*>", k)]
                       if m}

    names, det_flags = variants(kernels_det)
    if not names or not det_flags:
        pytest.skip(f"kernel variants not visible in the profiler (kernels: {sorted(kernels_det)[:6]})")
    assert det_flags == {"false"}, names
    assert variants(kernels_default)[1] == {"true"}, variants(kernels_default)[0]


def test_forward_is_bitwise_repeatable_without_deterministic_mode(algo):
    x = to_dev(make_sparse(2, 16, 0.2, 8, f32, seed=11))
    for dtype in (f32, f16):
        conv = snn.SubMConv3d(8, 24, 3).to(dtype).to(DEV)
        xx = x.replace(x.feats.to(dtype))
        with torch.no_grad():
            assert torch.equal(conv(xx).feats, conv(xx).feats)


# ------------------------------------------------------------------------------------------------------------
# Memory: no growth across steps (no global buffers, no leaks)
# ------------------------------------------------------------------------------------------------------------


@needs_gpu
def test_no_memory_growth_across_steps(algo):
    x = to_dev(make_sparse(2, 24, 0.2, 16, f16, seed=2))
    net = snn.SparseSequential(snn.SubMConv3d(16, 32, 3), snn.SparseReLU(),
                               snn.SparseConv3d(32, 32, 2, stride=2, indice_key="m"), snn.SubMConv3d(32, 32, 3),
                               snn.SparseInverseConv3d(32, 16, 2, indice_key="m"), snn.SparseMaxPool3d(2, 2),
                               snn.SparseAvgPool3d(2, 1)).half().to(DEV)

    def step():
        feats = x.feats.detach().clone().requires_grad_(True)
        net(x.replace(feats)).feats.float().square().sum().backward()
        net.zero_grad(set_to_none=True)

    step()  # maps cached in x, cuBLAS workspace allocated
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == base


# ------------------------------------------------------------------------------------------------------------
# Large inputs: grid-stride loops, multi-block scans, table sizes (about a million sites)
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large():
    coords = random_coords(2, (160, 160, 48), n=1_100_000, seed=3)
    return coords, ops.build_subm_map(coords, [3, 3, 3], [1, 1, 1])


@needs_gpu
def test_large_maps_match_cpu(large):
    coords, nbr = large
    cd = dev(coords)
    got = ops.build_subm_map(cd, [3, 3, 3], [1, 1, 1])
    assert torch.equal(got.cpu(), nbr)
    args = ([160, 160, 48], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    rc, rn = ops.build_strided_map(coords, *args)
    gc, gn = ops.build_strided_map(cd, *args)
    assert torch.equal(gc.cpu(), rc) and torch.equal(gn.cpu(), rn)
    n = coords.shape[0]
    assert torch.equal(ops.invert_map(gn, n).cpu(), ops.invert_map(rn, n))
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(1_000_000, 3, generator=g, dtype=f64) * torch.tensor([100.0, 100.0, 10.0])
    a, b = ops.voxelize(pts, [0.1, 0.1, 0.1], [0.0] * 3), ops.voxelize(dev(pts), [0.1, 0.1, 0.1], [0.0] * 3)
    assert torch.equal(b[0].cpu(), a[0]) and torch.equal(b[1].cpu(), a[1])


@needs_gpu
@pytest.mark.parametrize("dtype,cin,cout", [(f32, 4, 5), (f16, 16, 16)], ids=["f32-4-5", "f16-16-16"])
def test_large_conv_matches_cpu(large, dtype, cin, cout, algo):
    coords, nbr = large
    n = coords.shape[0]
    g = torch.Generator().manual_seed(1)
    feats = rounded(torch.randn(n, cin, generator=g, dtype=f64), dtype)
    weight = rounded(torch.randn(27, cin, cout, generator=g, dtype=f64) / 4, dtype)
    nd = dev(nbr)
    got = ops.sparse_conv(dev(feats, dtype), dev(weight, dtype), None, nd, None)
    check_result(got, ops.sparse_conv(feats, weight, None, nbr, None),
                 ops.sparse_conv(feats.abs(), weight.abs(), None, nbr, None), 27 * cin, dtype, "forward", 28)
    go = upstream((n, cout), dtype, 2)
    got = ops.sparse_conv_weight_grad(dev(feats, dtype), dev(go, dtype), nd)
    check_result(got, ops.sparse_conv_weight_grad(feats, go, nbr),
                 ops.sparse_conv_weight_grad(feats.abs(), go.abs(), nbr), n, dtype, "weight gradient")


# ------------------------------------------------------------------------------------------------------------
# One call of every kernel variant at tiny sizes: the target of compute-sanitizer in tools/gpu_session.sh
# ------------------------------------------------------------------------------------------------------------


@needs_gpu
def test_sanitizer_smoke(monkeypatch):
    x = make_sparse(2, 6, 0.4, 1, f64, seed=1)
    c = dev(x.coords)
    n = x.coords.shape[0]
    nbr = ops.build_subm_map(c, [3, 3, 3], [1, 1, 1])
    _, snbr = ops.build_strided_map(c, [6, 6, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    snt = ops.invert_map(snbr, n)
    ops.voxelize(dev(torch.rand(200, 3, dtype=f64) * 3), [0.5, 0.5, 0.5], [0.0] * 3)
    for path in ("gemm", "fused"):
        monkeypatch.setenv("SPARSECONV_CUDA_ALGO", path)
        for dtype in DTYPES:
            pairs = [(8, 16), (8, 13), (13, 8), (40, 72)] if dtype in (f16, bf16) else [(5, 7), (40, 72)]
            for cin, cout in pairs:
                f = torch.randn(n, cin, device=DEV, dtype=dtype)
                w = torch.randn(27, cin, cout, device=DEV, dtype=dtype)
                b = torch.randn(cout, device=DEV, dtype=dtype)
                out = ops.sparse_conv(f, w, b, nbr, None)
                ops.sparse_conv(f, w, b, snbr, snt)
                for det in (False, True):
                    sparseconv.set_deterministic(det)
                    ops.sparse_conv_weight_grad(f, out, nbr)
                sparseconv.set_deterministic(False)
            o, a = ops.sparse_max_pool(f, snbr, snt)
            ops.sparse_max_pool_backward(o, a, snt)
            ops.sparse_avg_pool_backward(ops.sparse_avg_pool(f, snbr, snt), snbr, snt)
    torch.cuda.synchronize()
