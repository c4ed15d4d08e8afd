#!/usr/bin/env python3
"""What the PyTorch-ecosystem modes cost or save on CPU: bfloat16 autocast, deterministic mode, torch.compile.

Each (workload, mode) runs in a fresh child process (its own peak RSS, no warm caches shared between modes):

  subm_fwd   SubMConv3d(64, 64) forward on a generated LiDAR scene (~200k voxels), kernel map cached;
  dense_fwd  the peer: torch's own nn.Conv3d(64, 64, 3) on a 16^3 grid under the same modes (small: on CPUs
             without native bfloat16, torch's bfloat16 Conv3d takes a slow fallback path).
  unet_step  SparseUNet(4, 8, channels=(32, 64)) train step (forward, loss, backward, SGD) on ~50k voxels,
             maps built inside the step.
  clf_step   VoxelClassifier(4, 6, 32) train step on 16 random 32^3 clouds (10% occupied), 1 thread;
             modes fp32 (eager), bf16, compiled (torch.compile, inductor: graph breaks at the strided map builds,
             whose output sizes depend on the data), compiled_1graph (one graph: dynamo's
             capture_dynamic_output_shape_ops).

Modes: fp32 (default), bf16 (torch.autocast("cpu", torch.bfloat16)), det (sparseconv.set_deterministic(True)),
compiled, compiled_1graph. Prints the machine facts and a table of medians (time, peak RSS, ratio to fp32/eager), writes
benchmarks/results/ecosystem.json and docs/img/ecosystem.png.

Usage: python benchmarks/bench_ecosystem.py [--repeats 7] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_conv import machine_facts, reset_peak_rss, rss_now_mib, rss_peak_mib, time_it, wait_idle  # noqa: E402
from compare_peers import write_atomic  # noqa: E402

PLAN = [
    ("subm_fwd", "fp32"), ("subm_fwd", "bf16"),
    ("dense_fwd", "fp32"), ("dense_fwd", "bf16"),
    ("unet_step", "fp32"), ("unet_step", "bf16"), ("unet_step", "det"),
    ("clf_step", "fp32"), ("clf_step", "bf16"), ("clf_step", "compiled"), ("clf_step", "compiled_1graph"),
]


def _scene(n_target, cin, seed=0):
    import torch

    import sparseconv
    from sparseconv.data import lidar_scene

    points, _ = lidar_scene(n_target, voxel_size=0.1, seed=seed)
    st, _ = sparseconv.voxelize(torch.from_numpy(points), None, 0.1)
    g = torch.Generator().manual_seed(seed)
    return st.replace(torch.randn(st.coords.shape[0], cin, generator=g))


def _autocast(mode):
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()


def _workload(name, mode, quick):
    """Returns (fn, info): fn() runs one timed step."""
    import torch

    import sparseconv
    from sparseconv import nn as snn
    from sparseconv.models import SparseUNet, VoxelClassifier

    if mode == "det":
        sparseconv.set_deterministic(True)
    if name == "subm_fwd":
        x = _scene(50_000 if quick else 200_000, 64)
        conv = snn.SubMConv3d(64, 64, 3, indice_key="s")
        with torch.no_grad():
            conv(x)  # builds and caches the map

        def fn():
            with torch.no_grad(), _autocast(mode):
                conv(x)

        return fn, {"voxels": int(x.coords.shape[0])}
    if name == "dense_fwd":
        side = 16
        conv = torch.nn.Conv3d(64, 64, 3, padding=1)
        x = torch.randn(1, 64, side, side, side)

        def fn():
            with torch.no_grad(), _autocast(mode):
                conv(x)

        return fn, {"grid": side}
    if name == "unet_step":
        x = _scene(12_000 if quick else 50_000, 4)
        torch.manual_seed(0)
        model = SparseUNet(4, 8, channels=(32, 64))
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        labels = torch.randint(0, 8, (x.coords.shape[0],))

        def fn():
            fresh = sparseconv.SparseTensor(x.feats, x.coords, x.spatial_shape, x.batch_size)  # maps built anew
            opt.zero_grad()
            with _autocast(mode):
                out = model(fresh)
            torch.nn.functional.cross_entropy(out.feats.float(), labels).backward()
            opt.step()

        return fn, {"voxels": int(x.coords.shape[0])}
    if name == "clf_step":
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = VoxelClassifier(4, 6, 32, channels=(16, 32))
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        batch = 4 if quick else 16
        occupied = torch.rand(batch, 32, 32, 32) < 0.1
        idx = occupied.nonzero().to(torch.int32)
        x = sparseconv.SparseTensor(torch.randn(idx.shape[0], 4), idx.contiguous(), (32, 32, 32), batch)
        labels = torch.randint(0, 6, (batch,))
        if mode == "compiled_1graph":
            torch._dynamo.config.capture_dynamic_output_shape_ops = True
        step_model = torch.compile(model) if mode.startswith("compiled") else model

        def fn():
            fresh = sparseconv.SparseTensor(x.feats, x.coords, x.spatial_shape, x.batch_size)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(step_model(fresh), labels).backward()
            opt.step()

        return fn, {"voxels": int(x.coords.shape[0]), "batch": batch, "threads": 1}
    raise ValueError(f"workload: expected one of {sorted({w for w, _ in PLAN})}, got {name!r}")


def child(name, mode, repeats, quick):
    fn, info = _workload(name, mode, quick)
    base = rss_now_mib()  # interpreter, torch and the inputs: the step's own memory is the peak above this
    reset_peak_rss()
    warmup = 3 if mode.startswith("compiled") else 1  # compiled: the first calls compile (and recompile for dynamic sizes)
    if name == "dense_fwd" and mode == "bf16":
        repeats = min(repeats, 3)  # seconds per call on CPUs without native bfloat16
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = time_it(lambda _: fn(), repeats, warmup - 1)
    peak = rss_peak_mib()
    return {"workload": name, "mode": mode, "median_s": median(times), "min_s": min(times), "first_call_s": first,
            "peak_rss_mib": peak, "step_mib": max(0.0, peak - base), **info}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 repeats (a smoke run)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ecosystem.json"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "img" / "ecosystem.png"))
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    if args.child:
        print(json.dumps(child(*args.child, repeats, args.quick)))
        return 0

    import torch

    facts = machine_facts()
    facts.update(torch=torch.__version__, threads=torch.get_num_threads())
    print("machine:", json.dumps(facts))
    print(f"other load before start: {wait_idle(30):.2f} cores")
    rows = []
    for i, (name, mode) in enumerate(PLAN):
        cmd = [sys.executable, __file__, "--child", name, mode, "--repeats", str(repeats)] + (["--quick"] * args.quick)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if proc.returncode != 0:
            print(f"[{i + 1}/{len(PLAN)}] {name} {mode}: FAILED\n{proc.stderr[-2000:]}", flush=True)
            rows.append({"workload": name, "mode": mode, "error": proc.stderr[-500:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"[{i + 1}/{len(PLAN)}] {name} {mode}: {row['median_s'] * 1e3:.1f} ms, {row['peak_rss_mib']:.0f} MiB "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    base = {r["workload"]: r for r in rows if r.get("mode") == "fp32" and "error" not in r}
    print("\n| workload | mode | median | vs fp32/eager | peak RSS | step memory (peak above setup) | vs fp32/eager |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['workload']} | {r['mode']} | failed | | | | |")
            continue
        b = base.get(r["workload"])
        tr = f"{r['median_s'] / b['median_s']:.2f}x" if b else ""
        mr = f"{r['step_mib'] / b['step_mib']:.2f}x" if b and b["step_mib"] > 0 else ""
        print(f"| {r['workload']} | {r['mode']} | {r['median_s'] * 1e3:.1f} ms | {tr} | {r['peak_rss_mib']:.0f} MiB "
              f"| {r['step_mib']:.0f} MiB | {mr} |")
    data = {"machine": facts, "repeats": repeats, "quick": args.quick, "rows": rows}
    write_atomic(Path(args.json), lambda t: Path(t).write_text(json.dumps(data, indent=1)))
    plot(rows, base, args.png)
    print(f"\nwrote {args.json} and {args.png}")
    return 0


def plot(rows, base, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r and r["workload"] in base]
    labels = [f"{r['workload']} {r['mode']}" for r in ok]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, title in ((axes[0], "median_s", "time (relative to fp32 / eager, log scale)"),
                           (axes[1], "step_mib", "step memory above setup (relative to fp32 / eager)")):
        vals = [r[key] / max(base[r["workload"]][key], 1e-9) for r in ok]
        colors = ["#888" if r["mode"] == "fp32" else "#2a7" if v <= 1 else "#c44" for r, v in zip(ok, vals)]
        ax.bar(range(len(ok)), vals, color=colors)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}x", ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(ok)), labels, fontsize=8, rotation=40, ha="right")
        ax.set_title(title)
    axes[0].set_yscale("log")
    fig.suptitle("sparseconv on CPU: bfloat16 autocast, deterministic mode, torch.compile")
    fig.tight_layout()
    write_atomic(Path(path), lambda t: fig.savefig(t, dpi=110))


if __name__ == "__main__":
    sys.exit(main())
