#!/usr/bin/env python
"""SubMConv3d 3x3x3 on the GPU: the figures issue 6 asks for, in one run, saved as they are measured.

Figures, most important first (a run cut short by --time-budget or a signal keeps what it has measured):
  * kernel-map build, torch.ops.sparseconv.build_subm_map 3x3x3, on the 1M-voxel LiDAR-like scene
    (sparseconv.data.lidar_scene, voxel 0.1 m). Target: < 2 ms.
  * SubMConv3d C -> C, map cached: forward, and forward + backward (input, weight and bias gradients), at 1M and
    200k voxels, C = 64 and 32, float16 / bfloat16 / float32: milliseconds, TFLOP/s (2 * pairs * C^2 per pass,
    3 passes for forward + backward), peak torch.cuda.max_memory_allocated. Next to it, in the same run and
    dtype: torch.matmul of the same FLOP count (a square product n^3 = 3 * pairs * C^2: the GPU's matrix-multiply
    throughput for that much work), the three same-shape products the convolution does without its gathers and
    scatters ([pairs, C] x [C, C] twice, [C, pairs] x [pairs, C]), and a large square product (peak).
    Target: float16 forward + backward at 1M voxels, C = 64, >= 40% of the same-FLOP float16 matmul.
  * for that configuration, per operator (forward, input gradient, weight gradient) and per path (auto, and
    SPARSECONV_CUDA_ALGO=gemm / fused): where the time goes, and which path meets the target.
  * a correctness spot check at full size: each dtype's and path's output against float32 (relative L2).
  * strided map builds and voxelize at 1M voxels (information).
Timing: CUDA events on the current stream around each call, after --warmup calls and a synchronize; medians
(with min and max) of up to --repeats calls, fewer when one call takes long. TF32 is off for float32
(torch.set_float32_matmul_precision("highest"), for the convolution and the matmul references alike).

Output: <out-dir>/bench_cuda.json, rewritten atomically after every figure ("status" says how the run ended),
and <out-dir>/bench_cuda.png at the end (also after SIGTERM/SIGINT or an error). A summary table is printed.

    python benchmarks/bench_cuda.py --out-dir results/                 # the full set (about 2-3 min on an H100)
    python benchmarks/bench_cuda.py --prepare-scenes --scene-cache DIR # scenes only (NumPy), e.g. during a build
    python benchmarks/bench_cuda.py --matmul-only                      # machine facts and matmul references only
    python benchmarks/bench_cuda.py --device cpu --voxels 20000 --channels 16 --dtypes fp32 --repeats 2  # smoke
Without CUDA (and without --device cpu) it says so, writes a JSON saying so, and exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from statistics import median

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from compare_peers import write_atomic  # noqa: E402  (temporary file, then rename)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TARGET_FRACTION = 0.40
TARGET_MAP_MS = 2.0
KEY = {"voxels": 1_000_000, "c": 64, "dtype": "fp16"}  # the configuration of the throughput target


class Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler: finish what is saved, plot, exit."""


def _on_signal(signum, frame):
    raise Stop(f"signal {signum}")


# ------------------------------------------------------------------------------------------------------------
# Results file: rewritten atomically after every figure
# ------------------------------------------------------------------------------------------------------------


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Results:
    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.time()
        self.data = {"status": "running", "started": _now(), "updated": None, "elapsed_s": 0.0, "facts": {},
                     "settings": {}, "matmul_peak": {}, "scenes": {}, "maps": [], "conv": [], "breakdown": [],
                     "checks": [], "targets": {}, "errors": [], "skipped": []}

    def save(self):
        self.data["updated"] = _now()
        self.data["elapsed_s"] = round(time.time() - self.t0, 1)
        text = json.dumps(self.data, indent=1, default=str)
        write_atomic(self.path, lambda p: Path(p).write_text(text))

    def add(self, key, row):
        self.data[key].append(row)
        self.save()

    def error(self, what, exc):
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        self.data["errors"].append({"what": what, "error": f"{type(exc).__name__}: {exc}"[:2000],
                                    "traceback": "".join(tb)[-4000:]})
        print(f"  ERROR in {what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
        self.save()


# ------------------------------------------------------------------------------------------------------------
# Scenes: LiDAR-like, voxelized exactly as sparseconv.voxelize(points, None, 0.1) does, cached as .npz
# ------------------------------------------------------------------------------------------------------------


def _scenes_module():
    """sparseconv/data/scenes.py loaded on its own (NumPy only): usable before the extension is built."""
    spec = importlib.util.spec_from_file_location("_sc_scenes", ROOT / "sparseconv" / "data" / "scenes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def voxelize_numpy(points, voxel=0.1):
    """Unique voxels of points, as sparseconv.voxelize: floor((p - min) / voxel) in float64, sorted by (x, y, z),
    batch 0. Returns (coords int32 [V, 4], spatial_shape)."""
    p = points.astype(np.float64)
    q = np.floor((p - p.min(0)) / voxel).astype(np.int64)
    assert q.min() >= 0 and q.max() < (1 << 17), "scene outside the packed-key range"
    uniq = np.unique((q[:, 0] << 34) | (q[:, 1] << 17) | q[:, 2])
    mask = (1 << 17) - 1
    coords = np.stack([np.zeros_like(uniq), uniq >> 34, (uniq >> 17) & mask, uniq & mask], 1).astype(np.int32)
    return coords, tuple(int(v) + 1 for v in coords[:, 1:].max(0))


def load_scene(n_voxels, seed, cache):
    """(coords int32 [V, 4], spatial_shape, points float32 [P, 3], how it was obtained, seconds)."""
    t0 = time.time()
    path = Path(cache) / f"lidar_{n_voxels}_{seed}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return z["coords"], tuple(int(v) for v in z["shape"]), z["points"], "cache", time.time() - t0
    points, _ = _scenes_module().lidar_scene(n_voxels, voxel_size=0.1, seed=seed)
    coords, shape = voxelize_numpy(points)
    if path is not None:
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, coords=coords, shape=np.array(shape), points=points.astype(np.float32))
        write_atomic(path, write)
    return coords, shape, points, "generated", time.time() - t0


# ------------------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn, repeats, warmup, max_seconds=1.5):
    """{"ms": median, "min_ms", "max_ms", "n"} of fn() after warm-up; CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_start = time.perf_counter()
    for i in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if i >= 2 and time.perf_counter() - t_start > max_seconds:
            break
    return {"ms": median(times), "min_ms": min(times), "max_ms": max(times), "n": len(times)}


def peak_mib(device, fn):
    if device.type != "cuda":
        fn()
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def matmul_square(device, dtype, n, repeats, warmup):
    """torch.matmul n x n x n: (TFLOP/s, timing)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    t = timed(device, lambda: torch.matmul(a, b), repeats, warmup)
    return 2.0 * n**3 / (t["ms"] * 1e-3) / 1e12, t


def same_flop_side(flops):
    """Side n of the square product with 2 n^3 ~ flops (a multiple of 64)."""
    return max(64, int(round((flops / 2.0) ** (1.0 / 3.0) / 64.0)) * 64)


# ------------------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------------------


def set_algo(name):
    if name == "auto":
        os.environ.pop("SPARSECONV_CUDA_ALGO", None)
    else:
        os.environ["SPARSECONV_CUDA_ALGO"] = name


def cuda_context_ok(device):
    if device.type != "cuda":
        return True
    try:
        torch.ones(1, device=device).add_(1)
        torch.cuda.synchronize(device)
        return True
    except Exception:
        return False


def measure_maps(device, coords_np, shape, points, args, res, big):
    ops = torch.ops.sparseconv
    coords = torch.from_numpy(coords_np).to(device)
    n = coords.shape[0]
    rows = []
    cases = [("build_subm_map 3x3x3", lambda: ops.build_subm_map(coords, [3, 3, 3], [1, 1, 1]))]
    if big:
        cases += [
            ("build_strided_map 2x2x2/2", lambda: ops.build_strided_map(coords, list(shape), [2, 2, 2], [2, 2, 2],
                                                                        [0, 0, 0], [1, 1, 1])),
            ("build_strided_map 3x3x3/2 pad 1", lambda: ops.build_strided_map(coords, list(shape), [3, 3, 3],
                                                                              [2, 2, 2], [1, 1, 1], [1, 1, 1])),
        ]
        pts = torch.from_numpy(points).to(device)
        origin = pts.double().amin(0).tolist()
        cases.append((f"voxelize {pts.shape[0]:,} points", lambda: ops.voxelize(pts, [0.1, 0.1, 0.1], origin)))
    for name, fn in cases:
        try:
            t = timed(device, fn, args.repeats, args.warmup)
            row = {"voxels": n, "op": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()},
                   "peak_mib": peak_mib(device, fn)}
            res.add("maps", row)
            print(f"  {name}: {t['ms']:.3f} ms (min {t['min_ms']:.3f}, max {t['max_ms']:.3f}, n={t['n']}), "
                  f"peak {row['peak_mib']} MiB", flush=True)
            rows.append(row)
        except Stop:
            raise
        except Exception as e:
            res.error(f"{name} at {n} voxels", e)
            if not cuda_context_ok(device):
                raise
    return rows


def measure_conv(device, x, nbr, pairs, c, dtype_name, algo, args, res, ref_out=None):
    """One SubMConv3d C -> C configuration on one path: forward, forward + backward, matmul references, check."""
    from sparseconv.nn import SubMConv3d

    dtype = DTYPES[dtype_name]
    set_algo(algo)
    torch.manual_seed(0)
    conv = SubMConv3d(c, c, 3).to(device=device, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(1)
    feats = torch.randn(x.coords.shape[0], c, device=device, dtype=dtype, generator=g)
    grad = torch.randn(x.coords.shape[0], c, device=device, dtype=dtype, generator=g)
    xs = x.replace(feats)  # shares x's cache: the map is built once, before any timing
    with torch.no_grad():
        conv(xs)

    def fwd():
        with torch.no_grad():
            return conv(xs)

    leaf = feats.clone().requires_grad_(True)
    xg = x.replace(leaf)

    def fwdbwd():
        conv.zero_grad(set_to_none=True)
        leaf.grad = None
        conv(xg).feats.backward(grad)

    row = {"voxels": int(x.coords.shape[0]), "pairs": pairs, "c": c, "dtype": dtype_name, "algo": algo}
    tf = timed(device, fwd, args.repeats, args.warmup)
    tb = timed(device, fwdbwd, args.repeats, args.warmup)
    flops = 2.0 * pairs * c * c
    row.update(fwd_ms=tf["ms"], fwd_min_ms=tf["min_ms"], fwdbwd_ms=tb["ms"], fwdbwd_min_ms=tb["min_ms"],
               n_runs=tb["n"], fwd_tflops=flops / (tf["ms"] * 1e-3) / 1e12,
               fwdbwd_tflops=3 * flops / (tb["ms"] * 1e-3) / 1e12,
               peak_mib_fwd=peak_mib(device, fwd), peak_mib_fwdbwd=peak_mib(device, fwdbwd))
    if ref_out is not None:  # output of the float32 gemm path on the same weights and inputs
        out = fwd().feats.double()
        row["check_rel_l2_vs_fp32"] = float((out - ref_out).norm() / ref_out.norm().clamp_min(1e-30))
    set_algo("auto")
    return row, conv


def matmul_refs(device, dtype_name, pairs, c, args, cache):
    """Same-FLOP square product and the three same-shape products for (pairs, C) in dtype (cached per key)."""
    key = (dtype_name, pairs, c)
    if key in cache:
        return cache[key]
    dtype = DTYPES[dtype_name]
    flops = 3 * 2.0 * pairs * c * c
    n = same_flop_side(flops)
    sq_tflops, sq_t = matmul_square(device, dtype, n, args.repeats, args.warmup)
    g = torch.Generator(device=device).manual_seed(2)
    a = torch.randn(pairs, c, device=device, dtype=dtype, generator=g)
    go = torch.randn(pairs, c, device=device, dtype=dtype, generator=g)
    w = torch.randn(c, c, device=device, dtype=dtype, generator=g)
    t = timed(device, lambda: (a @ w, go @ w.t(), a.t() @ go), args.repeats, args.warmup)
    cache[key] = {"same_flop_n": n, "same_flop_tflops": sq_tflops, "same_flop_ms": sq_t["ms"],
                  "same_shape_tflops": flops / (t["ms"] * 1e-3) / 1e12, "same_shape_ms": t["ms"]}
    return cache[key]


def breakdown(device, x, nbr, c, dtype_name, args, res):
    """Forward, input gradient and weight gradient operators on their own, per path."""
    ops = torch.ops.sparseconv
    dtype = DTYPES[dtype_name]
    n = x.coords.shape[0]
    g = torch.Generator(device=device).manual_seed(3)
    f = torch.randn(n, c, device=device, dtype=dtype, generator=g)
    go = torch.randn(n, c, device=device, dtype=dtype, generator=g)
    w = torch.randn(27, c, c, device=device, dtype=dtype, generator=g) / math.sqrt(27 * c)
    wt = w.flip(0).transpose(1, 2).contiguous()
    b = torch.zeros(c, device=device, dtype=dtype)
    pairs = int((nbr >= 0).sum())
    flops = 2.0 * pairs * c * c
    for algo in ("auto", "gemm", "fused"):
        set_algo(algo)
        for op, fn in (("forward", lambda: ops.sparse_conv(f, w, b, nbr, None)),
                       ("input gradient", lambda: ops.sparse_conv(go, wt, None, nbr, None)),
                       ("weight gradient", lambda: ops.sparse_conv_weight_grad(f, go, nbr))):
            try:
                t = timed(device, fn, args.repeats, args.warmup)
                row = {"voxels": n, "c": c, "dtype": dtype_name, "algo": algo, "op": op, "ms": t["ms"],
                       "min_ms": t["min_ms"], "tflops": flops / (t["ms"] * 1e-3) / 1e12}
                res.add("breakdown", row)
                print(f"    {algo:5s} {op:16s} {t['ms']:8.3f} ms  {row['tflops']:7.1f} TFLOP/s", flush=True)
            except Stop:
                raise
            except Exception as e:
                res.error(f"breakdown {algo} {op}", e)
                if not cuda_context_ok(device):
                    raise
        set_algo("auto")
    # Full-size agreement of the paths (float32 reference through the gemm path, TF32 off).
    try:
        set_algo("gemm")
        ref = ops.sparse_conv(f.float(), w.float(), b.float(), nbr, None).double()
        ref_w = ops.sparse_conv_weight_grad(f.float(), go.float(), nbr).double()
        for algo in ("gemm", "fused"):
            set_algo(algo)
            out = ops.sparse_conv(f, w, b, nbr, None).double()
            gw = ops.sparse_conv_weight_grad(f, go, nbr).double()
            row = {"voxels": n, "c": c, "dtype": dtype_name, "algo": algo,
                   "forward_rel_l2_vs_fp32": float((out - ref).norm() / ref.norm()),
                   "weight_grad_rel_l2_vs_fp32": float((gw - ref_w).norm() / ref_w.norm())}
            res.add("checks", row)
            print(f"    check {algo}: forward rel L2 {row['forward_rel_l2_vs_fp32']:.2e}, weight gradient "
                  f"{row['weight_grad_rel_l2_vs_fp32']:.2e} (vs float32)", flush=True)
    except Stop:
        raise
    except Exception as e:
        res.error("full-size path check", e)
    finally:
        set_algo("auto")


def facts(device):
    f = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": sys.version.split()[0],
         "float32_matmul_precision": torch.get_float32_matmul_precision()}
    try:
        import sparseconv

        info = sparseconv.build_info()
        f["sparseconv"] = {k: info.get(k) for k in ("version", "cuda", "cuda_version", "cuda_archs", "torch")}
    except Exception as e:
        f["sparseconv"] = f"not importable: {type(e).__name__}: {e}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        f.update(device=p.name, sm=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                 memory_gib=round(p.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        try:
            import subprocess

            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            f["nvidia_smi"] = q.stdout.strip()
        except Exception:
            pass
    else:
        f.update(device="cpu", threads=torch.get_num_threads())
    return f


def targets(data):
    out = {}
    key = [r for r in data["conv"] if r["voxels"] >= 0.9 * KEY["voxels"] and r["c"] == KEY["c"]
           and r["dtype"] == KEY["dtype"]]
    if key:
        best = max(key, key=lambda r: r.get("fraction_same_flop") or 0)
        auto = next((r for r in key if r["algo"] == "auto"), best)
        out["fwdbwd_fp16_c64_1M_vs_same_flop_matmul"] = {
            "target": f">= {TARGET_FRACTION:.0%}", "value": auto.get("fraction_same_flop"),
            "pass": bool(auto.get("fraction_same_flop") and auto["fraction_same_flop"] >= TARGET_FRACTION),
            "path": "auto", "best_path": best["algo"], "best_value": best.get("fraction_same_flop"),
            "fwdbwd_ms": auto["fwdbwd_ms"], "fwdbwd_tflops": auto["fwdbwd_tflops"],
            "same_flop_matmul_tflops": auto.get("same_flop_tflops"), "vs_peak_matmul": auto.get("fraction_peak")}
    maps = [r for r in data["maps"] if r["op"].startswith("build_subm_map") and r["voxels"] >= 0.9 * KEY["voxels"]]
    if maps:
        out["map_build_1M_ms"] = {"target": f"< {TARGET_MAP_MS} ms", "value": maps[0]["ms"],
                                  "pass": maps[0]["ms"] < TARGET_MAP_MS, "voxels": maps[0]["voxels"]}
    return out


def summary(data):
    lines = [f"## SubMConv3d 3x3x3 on {data['facts'].get('device')} ({data['status']})", "",
             "| voxels | pairs | C | dtype | path | forward | fwd TFLOP/s | fwd+bwd | fwd+bwd TFLOP/s | same-FLOP matmul "
             "| fraction | same-shape matmul | peak matmul | peak memory | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["conv"]:
        chk = r.get("check_rel_l2_vs_fp32")
        lines.append(
            f"| {r['voxels']:,} | {r['pairs']:,} | {r['c']} | {r['dtype']} | {r['algo']} | {r['fwd_ms']:.3f} ms "
            f"| {r['fwd_tflops']:.1f} | {r['fwdbwd_ms']:.3f} ms | {r['fwdbwd_tflops']:.1f} "
            f"| {r.get('same_flop_tflops', float('nan')):.1f} (n={r.get('same_flop_n')}) "
            f"| {r.get('fraction_same_flop', float('nan')):.0%} | {r.get('same_shape_tflops', float('nan')):.1f} "
            f"| {r.get('peak_tflops', float('nan')):.1f} | {r.get('peak_mib_fwdbwd')} MiB "
            f"| {'' if chk is None else f'{chk:.1e}'} |")
    lines.append("")
    for r in data["maps"]:
        lines.append(f"- {r['op']} at {r['voxels']:,} voxels: {r['ms']:.3f} ms (min {r['min_ms']:.3f}), peak "
                     f"{r['peak_mib']} MiB")
    for name, t in data["targets"].items():
        lines.append(f"- target {name}: {t['value']} ({t['target']}) -> {'PASS' if t['pass'] else 'MISS'}")
    if data["errors"]:
        lines.append(f"- {len(data['errors'])} error(s): " + "; ".join(e["what"] for e in data["errors"]))
    if data["skipped"]:
        lines.append(f"- skipped (time budget): {', '.join(data['skipped'][:12])}")
    return "\n".join(lines) + "\n"


def plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(19, 5.2))
    ax = axes[0]
    rows = [r for r in data["conv"] if r["algo"] == "auto"] or data["conv"]
    if rows:
        xs = range(len(rows))
        ax.bar([i - 0.2 for i in xs], [r["fwdbwd_tflops"] for r in rows], 0.4, label="fwd+bwd")
        ax.bar([i + 0.2 for i in xs], [r["fwd_tflops"] for r in rows], 0.4, label="forward")
        ax.plot(list(xs), [r.get("same_flop_tflops", float("nan")) for r in rows], "k_", markersize=18,
                label="same-FLOP matmul")
        ax.plot(list(xs), [TARGET_FRACTION * r.get("same_flop_tflops", float("nan")) for r in rows], "r_",
                markersize=18, label=f"{TARGET_FRACTION:.0%} of it (target)")
        ax.set_xticks(list(xs), [f"{r['voxels'] / 1e3:,.0f}k\nC{r['c']}\n{r['dtype']}" for r in rows], fontsize=7)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set(title="SubMConv3d 3x3x3, automatic path", ylabel="TFLOP/s")
    ax = axes[1]
    bd = data["breakdown"]
    if bd:
        algos = [a for a in ("auto", "gemm", "fused") if any(r["algo"] == a for r in bd)]
        opnames = ["forward", "input gradient", "weight gradient"]
        for j, op in enumerate(opnames):
            vals = [next((r["ms"] for r in bd if r["algo"] == a and r["op"] == op), 0.0) for a in algos]
            bottom = [sum(next((r["ms"] for r in bd if r["algo"] == a and r["op"] == o), 0.0) for o in opnames[:j])
                      for a in algos]
            ax.bar(algos, vals, bottom=bottom, label=op)
        r0 = bd[0]
        ax.set(title=f"{r0['voxels']:,} voxels, C={r0['c']}, {r0['dtype']}: operators per path", ylabel="ms")
        ax.legend(fontsize=7)
    ax = axes[2]
    maps = data["maps"]
    if maps:
        ax.barh([f"{r['op']}\n{r['voxels']:,} voxels" for r in maps], [r["ms"] for r in maps])
        ax.axvline(TARGET_MAP_MS, color="r", linestyle="--", label=f"target {TARGET_MAP_MS} ms (subm map, 1M)")
        ax.tick_params(axis="y", labelsize=7)
        ax.set(title="kernel maps and voxelize", xlabel="ms")
        ax.legend(fontsize=7)
    f = data["facts"]
    fig.suptitle(f"sparseconv on {f.get('device')}, torch {f.get('torch')} (CUDA {f.get('torch_cuda')}), "
                 f"{data['status']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------


def run(args, res, device):
    t_end = time.time() + args.time_budget if args.time_budget else float("inf")

    def have_time(what):
        if time.time() < t_end:
            return True
        res.data["skipped"].append(what)
        res.save()
        print(f"  skipped (time budget): {what}", flush=True)
        return False

    res.data["facts"] = facts(device)
    print("machine:", json.dumps(res.data["facts"]), flush=True)
    res.save()
    side = args.square if device.type == "cuda" else min(args.square, 1024)
    for name in args.dtypes:
        tflops, t = matmul_square(device, DTYPES[name], side, args.repeats, args.warmup)
        res.data["matmul_peak"][name] = {"n": side, "tflops": tflops, "ms": t["ms"]}
        res.save()
        print(f"torch.matmul {side}^3 {name}: {tflops:.1f} TFLOP/s ({t['ms']:.3f} ms)", flush=True)
    if args.matmul_only:
        return

    import sparseconv
    from sparseconv.kmap import subm_map

    mm_cache = {}
    order = [(c, d) for c in args.channels for d in args.dtypes]
    key_first = sorted(order, key=lambda cd: (cd != (KEY["c"], KEY["dtype"])))
    for vi, n_vox in enumerate(args.voxels):
        if not have_time(f"scene {n_vox}"):
            break
        coords_np, shape, points, how, secs = load_scene(n_vox, args.seed, args.scene_cache)
        res.data["scenes"][str(n_vox)] = {"voxels": int(coords_np.shape[0]), "spatial_shape": shape,
                                          "points": int(points.shape[0]), "source": how, "seconds": round(secs, 1)}
        print(f"scene {n_vox:,}: {coords_np.shape[0]:,} voxels, grid {shape}, {points.shape[0]:,} points "
              f"({how}, {secs:.1f} s)", flush=True)
        measure_maps(device, coords_np, shape, points, args, res, big=vi == 0)
        coords = torch.from_numpy(coords_np).to(device)
        x = sparseconv.SparseTensor(torch.zeros(coords.shape[0], 1, device=device), coords, shape, 1)
        nbr = subm_map(x, (3, 3, 3), (1, 1, 1)).nbr  # cached in x: every layer below reuses it
        pairs = int((nbr >= 0).sum())
        res.data["scenes"][str(n_vox)]["pairs_3x3x3"] = pairs
        res.save()
        for c, dname in key_first:
            is_key = vi == 0 and (c, dname) == (KEY["c"], KEY["dtype"])
            algos = ["auto", "gemm", "fused"] if is_key else ["auto"]
            ref_out = None
            for algo in algos:
                if not have_time(f"{n_vox} C{c} {dname} {algo}"):
                    break
                try:
                    if ref_out is None and device.type == "cuda":
                        ref_out = _fp32_reference(device, x, c, dname)
                    row, _ = measure_conv(device, x, nbr, pairs, c, dname, algo, args, res, ref_out)
                    row.update(matmul_refs(device, dname, pairs, c, args, mm_cache))
                    row["peak_tflops"] = res.data["matmul_peak"].get(dname, {}).get("tflops")
                    row["fraction_same_flop"] = row["fwdbwd_tflops"] / row["same_flop_tflops"]
                    row["fraction_peak"] = row["fwdbwd_tflops"] / row["peak_tflops"] if row["peak_tflops"] else None
                    res.add("conv", row)
                    res.data["targets"] = targets(res.data)
                    res.save()
                    chk = row.get("check_rel_l2_vs_fp32")
                    print(f"  {n_vox / 1e6:.1f}M C={c} {dname} {algo:5s}: fwd {row['fwd_ms']:.3f} ms "
                          f"({row['fwd_tflops']:.1f} TFLOP/s), fwd+bwd {row['fwdbwd_ms']:.3f} ms "
                          f"({row['fwdbwd_tflops']:.1f} TFLOP/s = {row['fraction_same_flop']:.0%} of the same-FLOP "
                          f"matmul's {row['same_flop_tflops']:.0f}), peak {row['peak_mib_fwdbwd']} MiB"
                          + ("" if chk is None else f", vs fp32 {chk:.1e}"), flush=True)
                except Stop:
                    raise
                except Exception as e:
                    res.error(f"conv {n_vox} C{c} {dname} {algo}", e)
                    if not cuda_context_ok(device):
                        raise RuntimeError("CUDA context unusable; measurements stopped") from e
                finally:
                    set_algo("auto")
            if is_key and have_time("breakdown"):
                print(f"  per operator, {n_vox / 1e6:.1f}M voxels, C={c}, {dname}:", flush=True)
                breakdown(device, x, nbr, c, dname, args, res)
        del x, nbr, coords
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _fp32_reference(device, x, c, dname):
    """The layer's output in float32 through the gemm path (same seeds as measure_conv): the spot-check reference."""
    from sparseconv.nn import SubMConv3d

    set_algo("gemm")
    torch.manual_seed(0)
    conv = SubMConv3d(c, c, 3).to(device=device, dtype=DTYPES[dname]).float()
    g = torch.Generator(device=device).manual_seed(1)
    feats = torch.randn(x.coords.shape[0], c, device=device, dtype=DTYPES[dname], generator=g).float()
    with torch.no_grad():
        out = conv(x.replace(feats)).feats.double()
    set_algo("auto")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, nargs="+", default=[1_000_000, 200_000])
    ap.add_argument("--channels", type=int, nargs="+", default=[64, 32])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--square", type=int, default=8192, help="side of the peak matmul reference")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds; no new figure starts after it")
    ap.add_argument("--scene-cache", default=str(ROOT / "build" / "bench_scenes"))
    ap.add_argument("--prepare-scenes", action="store_true", help="only make the scenes (NumPy), then exit")
    ap.add_argument("--matmul-only", action="store_true", help="machine facts and matmul references only")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    if args.prepare_scenes:
        for n in args.voxels:
            coords, shape, points, how, secs = load_scene(n, args.seed, args.scene_cache)
            print(f"scene {n:,}: {coords.shape[0]:,} voxels, {points.shape[0]:,} points, {how} in {secs:.1f} s",
                  flush=True)
        return 0

    device = torch.device(args.device)
    suffix = "" if device.type == "cuda" else "_cpu_smoke"
    res = Results(Path(args.out_dir) / f"bench_cuda{suffix}.json")
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
        res.data["status"] = f"not run: CUDA unavailable ({why}; torch {torch.__version__})"
        res.save()
        print(res.data["status"])
        return 0
    torch.set_float32_matmul_precision("highest")
    res.data["settings"] = {k: v for k, v in vars(args).items() if k not in ("out_dir",)}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        run(args, res, device)
        res.data["status"] = "complete" if not res.data["skipped"] else "complete within the time budget (some skipped)"
    except Stop as e:
        res.data["status"] = f"stopped ({e})"
    except Exception as e:
        res.error("run", e)
        res.data["status"] = f"stopped by an error: {type(e).__name__}"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        res.data["targets"] = targets(res.data)
        res.save()
        text = summary(res.data)
        print(text, flush=True)
        try:
            write_atomic(res.path.with_suffix(".png"), lambda p: plot(res.data, p))
            print(f"written: {res.path} and {res.path.with_suffix('.png')}", flush=True)
        except Exception as e:
            print(f"plot failed: {type(e).__name__}: {e}; results in {res.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
