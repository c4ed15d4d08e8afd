#!/usr/bin/env python
"""SubMConv3d 3x3x3 on the GPU: the figures issue 6 asks for, in one run.

For each LiDAR-like scene (``sparseconv.data.lidar_scene(N, voxel_size=0.1)``, default 200k and 1M voxels) and
each C -> C layer (default C = 32, 64) and dtype (fp32, fp16, bf16):

* kernel-map build (``torch.ops.sparseconv.build_subm_map`` on device coordinates),
* forward with the map cached, and forward + backward (input, weight, bias gradients), map cached,
* achieved TFLOP/s (2 * pairs * C * C per forward, 3x that per forward + backward) next to, in the same run and
  dtype, torch.matmul on the same shapes ([pairs, C] @ [C, C]: the conv's arithmetic without gathers and
  scatters) and on a large square product (the GPU's matrix-multiply throughput for that dtype),
* peak ``torch.cuda.max_memory_allocated`` of each measure (reset before it; inputs included).

Times are medians of --repeats CUDA-event timings after --warmup runs. fp32 runs with TF32 as
``torch.backends.cuda.matmul.allow_tf32`` says (printed). Targets (issue 6): forward + backward at fp16 on the
1M-voxel scene at C = 64 reaching at least 40% of the square fp16 matmul's TFLOP/s, and map build under 2 ms
for 1M voxels: printed as PASS / MISS.

Writes ``results/bench_cuda.{csv,md,png}`` atomically. Without CUDA it says so and exits 0; ``--device cpu``
runs the same code on the CPU (small sizes: a smoke test of the script, not a GPU figure).

    python benchmarks/bench_cuda.py                                  # 200k and 1M voxels, C = 32/64, 3 dtypes
    python benchmarks/bench_cuda.py --device cpu --voxels 20000 --dtypes fp32 --repeats 2   # smoke
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from statistics import median

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from compare_peers import write_atomic  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TARGET_FRACTION = 0.40
TARGET_MAP_MS = 2.0


def timer(device, fn, repeats, warmup):
    """Median seconds of fn() (CUDA events on the current stream; perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return median(out)


def peak_mib(device, fn):
    """Peak allocated MiB while fn() runs (CUDA only; NaN on CPU)."""
    if device.type != "cuda":
        fn()
        return float("nan")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def matmul_tflops(device, dtype, m, k, n, repeats, warmup):
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    s = timer(device, lambda: torch.matmul(a, b), repeats, warmup)
    del a, b
    return 2.0 * m * k * n / s / 1e12


def scene(n_voxels, device, seed):
    import sparseconv
    from sparseconv.data import lidar_scene

    points, _ = lidar_scene(n_voxels, voxel_size=0.1, seed=seed)
    st, _ = sparseconv.voxelize(torch.from_numpy(points), None, 0.1)
    return st.coords.to(device=device, dtype=torch.int32).contiguous(), tuple(int(s) for s in st.spatial_shape)


def measure(device, coords, shape, c, dtype, repeats, warmup):
    import sparseconv
    from sparseconv.nn import SubMConv3d

    torch.manual_seed(0)
    conv = SubMConv3d(c, c, 3, indice_key="bench").to(device=device, dtype=dtype)
    feats = torch.randn(coords.shape[0], c, device=device, dtype=dtype)
    grad = torch.randn(coords.shape[0], c, device=device, dtype=dtype)
    x = sparseconv.SparseTensor(feats, coords, shape, 1)
    conv(x)  # builds and caches the map in x's cache
    nbr = torch.ops.sparseconv.build_subm_map(coords, [3, 3, 3], [1, 1, 1])
    pairs = int((nbr >= 0).sum())
    del nbr

    def fwd():
        with torch.no_grad():
            conv(x)

    leaf = feats.clone().requires_grad_(True)
    xg = x.replace(leaf)

    def fwdbwd():
        conv.zero_grad(set_to_none=True)
        leaf.grad = None
        conv(xg).feats.backward(grad)

    row = {"pairs": pairs}
    row["fwd_s"] = timer(device, fwd, repeats, warmup)
    row["fwd_mib"] = peak_mib(device, fwd)
    row["fwdbwd_s"] = timer(device, fwdbwd, repeats, warmup)
    row["fwdbwd_mib"] = peak_mib(device, fwdbwd)
    flops = 2.0 * pairs * c * c
    row["fwd_tflops"] = flops / row["fwd_s"] / 1e12
    row["fwdbwd_tflops"] = 3 * flops / row["fwdbwd_s"] / 1e12
    row["same_shape_mm_tflops"] = matmul_tflops(device, dtype, pairs, c, c, repeats, warmup)
    return row


def facts(device):
    import sparseconv

    f = {"torch": torch.__version__, "sparseconv": sparseconv.__version__,
         "build": {k: v for k, v in sparseconv.build_info().items() if k in ("cuda", "cuda_version", "cuda_arch")}}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        f.update(device=p.name, sm=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                 cuda=torch.version.cuda, tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        f.update(device="cpu", threads=torch.get_num_threads())
    return f


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--square", type=int, default=8192, help="side of the square matmul reference")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
        print(f"CUDA is unavailable ({why}; torch {torch.__version__}): nothing to measure on cuda.")
        return 0
    f = facts(device)
    print("machine:", ", ".join(f"{k} {v}" for k, v in f.items()))
    square = {}
    for name in args.dtypes:
        n = args.square if device.type == "cuda" else min(args.square, 1024)
        square[name] = matmul_tflops(device, DTYPES[name], n, n, n, args.repeats, args.warmup)
        print(f"torch.matmul {n}^3 {name}: {square[name]:.1f} TFLOP/s")

    rows = []
    for n_vox in args.voxels:
        coords, shape = scene(n_vox, device, args.seed)
        map_s = timer(device, lambda: torch.ops.sparseconv.build_subm_map(coords, [3, 3, 3], [1, 1, 1]),
                      args.repeats, args.warmup)
        map_mib = peak_mib(device, lambda: torch.ops.sparseconv.build_subm_map(coords, [3, 3, 3], [1, 1, 1]))
        print(f"{coords.shape[0]:,} voxels: kernel map build {map_s * 1e3:.3f} ms, peak {map_mib:.0f} MiB")
        for c in args.channels:
            for name in args.dtypes:
                r = measure(device, coords, shape, c, DTYPES[name], args.repeats, args.warmup)
                r.update(voxels=int(coords.shape[0]), c=c, dtype=name, map_ms=map_s * 1e3, map_mib=map_mib,
                         square_mm_tflops=square[name])
                rows.append(r)
                print(f"  C={c} {name}: fwd {r['fwd_s'] * 1e3:.3f} ms ({r['fwd_tflops']:.1f} TFLOP/s), "
                      f"fwd+bwd {r['fwdbwd_s'] * 1e3:.3f} ms ({r['fwdbwd_tflops']:.1f} TFLOP/s; "
                      f"{r['fwdbwd_tflops'] / square[name]:.0%} of matmul), peak {r['fwdbwd_mib']:.0f} MiB")
        del coords
        if device.type == "cuda":
            torch.cuda.empty_cache()

    md = report(rows, f, args)
    print(md)
    out = Path(args.out_dir)
    suffix = "" if device.type == "cuda" else "_cpu_smoke"
    write_atomic(out / f"bench_cuda{suffix}.md", lambda p: Path(p).write_text(md))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_atomic(out / f"bench_cuda{suffix}.csv", lambda p: Path(p).write_text(buf.getvalue()))
    write_atomic(out / f"bench_cuda{suffix}.png", lambda p: plot(rows, f, p))
    print(f"written: {out}/bench_cuda{suffix}.{{md,csv,png}}")
    return 0


def report(rows, f, args):
    lines = [f"## SubMConv3d 3x3x3 on {f['device']}", "",
             "- " + ", ".join(f"{k} {v}" for k, v in f.items()),
             f"- medians of {args.repeats} runs after {args.warmup} warm-up; map cached; peak = "
             "torch.cuda.max_memory_allocated during the measure", "",
             "| voxels | pairs | C | dtype | map build | forward | fwd TFLOP/s | fwd+bwd | fwd+bwd TFLOP/s "
             "| same-shape matmul TFLOP/s | square matmul TFLOP/s | fwd+bwd / square | peak fwd+bwd |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['voxels']:,} | {r['pairs']:,} | {r['c']} | {r['dtype']} | {r['map_ms']:.3f} ms "
                     f"| {r['fwd_s'] * 1e3:.3f} ms | {r['fwd_tflops']:.1f} | {r['fwdbwd_s'] * 1e3:.3f} ms "
                     f"| {r['fwdbwd_tflops']:.1f} | {r['same_shape_mm_tflops']:.1f} | {r['square_mm_tflops']:.1f} "
                     f"| {r['fwdbwd_tflops'] / r['square_mm_tflops']:.0%} | {r['fwdbwd_mib']:.0f} MiB |")
    big = max(r["voxels"] for r in rows)
    lines.append("")
    hit = [r for r in rows if r["voxels"] == big and r["c"] == 64 and r["dtype"] == "fp16"]
    if hit:
        frac = hit[0]["fwdbwd_tflops"] / hit[0]["square_mm_tflops"]
        lines.append(f"- target fwd+bwd fp16, C = 64, {big:,} voxels >= {TARGET_FRACTION:.0%} of fp16 matmul: "
                     f"{frac:.0%} -> {'PASS' if frac >= TARGET_FRACTION else 'MISS'}")
    map_ms = next(r["map_ms"] for r in rows if r["voxels"] == big)
    lines.append(f"- target map build < {TARGET_MAP_MS} ms at {big:,} voxels: {map_ms:.3f} ms -> "
                 f"{'PASS' if map_ms < TARGET_MAP_MS else 'MISS'}")
    return "\n".join(lines) + "\n"


def plot(rows, f, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    voxels = sorted({r["voxels"] for r in rows})
    fig, axes = plt.subplots(1, len(voxels), figsize=(6 * len(voxels), 4.5), squeeze=False)
    for ax, v in zip(axes[0], voxels):
        sub = [r for r in rows if r["voxels"] == v]
        labels = [f"C{r['c']}\n{r['dtype']}" for r in sub]
        x = range(len(sub))
        ax.bar([i - 0.2 for i in x], [r["fwdbwd_tflops"] for r in sub], 0.4, label="fwd+bwd")
        ax.bar([i + 0.2 for i in x], [r["fwd_tflops"] for r in sub], 0.4, label="forward")
        ax.plot(list(x), [r["square_mm_tflops"] for r in sub], "k_", markersize=20, label="square matmul")
        ax.set_xticks(list(x), labels)
        ax.set(title=f"{v:,} voxels (map build {sub[0]['map_ms']:.2f} ms)", ylabel="TFLOP/s")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"sparseconv SubMConv3d 3x3x3 on {f['device']}, torch {f['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
