#!/usr/bin/env python
"""Active-site growth through a stack of 6 3x3x3 convolutions: dense Conv3d against three sparse kinds.

Generated scanned shapes (sparseconv.data.shapes: box, sphere, cylinder, cone, torus, plane; the first
--shapes) are voxelized at 16^3 .. 256^3 with shapes.voxelize_cloud (the same clouds at every resolution, with
--points-per-cell x R_max^2 points each) and go, one at a time (batch 1), through 6 layers of each kind:

  dense    torch.nn.Conv3d(3, padding=1); active sites = cells where any channel is non-zero
  regular  SparseConv3d(3, stride=1, padding=1): output sites = input sites dilated by the kernel
  subm     SubMConv3d(3): output sites = input sites
  topk     SparseConv3d(3, stride=1, padding=1), then SparseTopK(max_active = the input's site count)

4 (shapes.FEATURE_NAMES) -> 16 -> ... -> 16 channels, float32, forward under no_grad, no bias, no activation:
all kinds share the dense layers' weights (from_conv3d), so a dense cell is non-zero exactly where the regular
sparse conv has a site, which the report checks; a bias would make every dense cell active after one layer.

Memory is measured in a fresh process per (resolution, shape, kind), forked from a forkserver that has
imported torch and sparseconv: after each layer, the RSS held over the RSS before the input was built (the
live activation and, for sparse kinds, the kernel maps that the tensors' shared cache keeps for backward and
inverse convs); during each layer, the peak RSS over the same base. The CSV also has each activation's bytes.

Prints the machine facts and a markdown table, writes sparsity_growth.csv and .png under --out-dir
(with a _quick suffix for --quick, so that a smoke test leaves the full results alone).

    .venv/bin/python benchmarks/sparsity_growth.py --quick   # 16^3..64^3, 3 shapes: ~1 min on 2 cores
    .venv/bin/python benchmarks/sparsity_growth.py           # 16^3..256^3, 6 shapes: ~16 min
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_conv import machine_facts, reset_peak_rss, rss_now_mib, rss_peak_mib  # noqa: E402
from memory_vs_density import GIB, MIB, fmt, make_context, mem_available, pct, run_in_child  # noqa: E402

KINDS = ("dense", "regular", "subm", "topk")
LABELS = {
    "dense": "dense Conv3d",
    "regular": "SparseConv3d",
    "subm": "SubMConv3d",
    "topk": "SparseConv3d+TopK",
}
FULL_RES, QUICK_RES = (16, 32, 64, 128, 256), (16, 32, 64)
LAYERS, IN_CHANNELS = 6, 4
CSV_FIELDS = (
    "resolution shape kind layer sites density activation_mib held_mib peak_mib layer_ms status note"
).split()


def build_layers(kind, C, seed):
    import torch

    import sparseconv.nn as spnn

    torch.manual_seed(seed)  # the same weights for every kind
    dense = [torch.nn.Conv3d(C if i else IN_CHANNELS, C, 3, padding=1, bias=False) for i in range(LAYERS)]
    if kind == "dense":
        return dense
    if kind == "subm":
        return [spnn.SubMConv3d.from_conv3d(c) for c in dense]
    return [spnn.SparseConv3d.from_conv3d(c) for c in dense]


def stack(kind, R, coords_path, feats_path, C, threads, seed):
    import gc

    import torch

    import sparseconv
    import sparseconv.nn as spnn

    gc.freeze()  # the server's objects: a collection would copy their pages (copy-on-write) into our RSS
    torch.set_num_threads(threads)
    layers = build_layers(kind, C, seed)
    c3, feats = torch.from_numpy(np.load(coords_path)), torch.from_numpy(np.load(feats_path))
    n_in = c3.shape[0]

    def make_input(c3, feats, R):
        if kind == "dense":
            x = torch.zeros(1, IN_CHANNELS, R, R, R)
            x[0, :, c3[:, 0].long(), c3[:, 1].long(), c3[:, 2].long()] = feats.t()
            return x
        return sparseconv.SparseTensor(feats, torch.nn.functional.pad(c3, (1, 0)), (R, R, R), 1)

    def apply(layer, x, k):
        x = layer(x)
        return spnn.SparseTopK(max_active=k)(x) if kind == "topk" else x

    def sites_and_bytes(x):
        if kind == "dense":
            return int((x != 0).any(1).sum()), x.nbytes
        return x.coords.shape[0], x.feats.nbytes + x.coords.nbytes

    with torch.no_grad():
        # Warm-up (thread pools, code pages, first-use allocations), so that what follows is the layers' own
        # memory: sparse kinds on a tiny grid, dense at the real size (oneDNN keeps ~6 MiB per new shape).
        if kind == "dense":
            layers[1](layers[0](make_input(c3, feats, R)))
        else:
            x = make_input(
                torch.tensor([[1, 1, 1], [2, 2, 2]], dtype=torch.int32), torch.randn(2, IN_CHANNELS), 5
            )
            for layer in layers:
                x = apply(layer, x, 1)
            del x
        gc.collect()
        base = rss_now_mib()
        x = make_input(c3, feats, R)
        del c3, feats
        held = rss_now_mib() - base
        n, nbytes = sites_and_bytes(x)
        out = [
            dict(layer=0, sites=n, activation_mib=nbytes / MIB, held_mib=held, peak_mib=held, layer_ms=0.0)
        ]
        for i, layer in enumerate(layers, 1):
            reset_peak_rss()
            t0 = time.perf_counter()
            x = apply(layer, x, n_in)
            dt = time.perf_counter() - t0
            peak = rss_peak_mib() - base
            gc.collect()
            held = rss_now_mib() - base
            n, nbytes = sites_and_bytes(x)
            out.append(
                dict(
                    layer=i,
                    sites=n,
                    activation_mib=nbytes / MIB,
                    held_mib=held,
                    peak_mib=peak,
                    layer_ms=dt * 1e3,
                )
            )
    return {"status": "ok", "layers": out}


def run(args):
    import torch

    import sparseconv
    from sparseconv.data import shapes

    facts = machine_facts()
    facts["torch"] = torch.__version__
    b = sparseconv.build_info()
    print(
        f"## Active-site growth through {LAYERS} 3x3x3 layers ({IN_CHANNELS} -> {args.channels} channels, "
        "float32, no bias, no activation, forward under no_grad, batch 1)\n"
    )
    print(
        f"- machine: {facts['cpu']}, {facts['cores']} cores ({'/'.join(facts['simd'])}), {facts['mem_gib']} "
        f"GiB RAM; device: cpu; torch {torch.__version__}, {args.threads} threads; sparseconv "
        f"{b.get('version')} ({b.get('simd')}, OpenMP {b.get('openmp_threads')})"
    )
    t_start = time.perf_counter()
    n_points = int(args.points_per_cell * max(args.resolutions) ** 2)
    clouds, labels = shapes.make_split(1, args.seed, n_points=n_points)
    names = [shapes.CLASS_NAMES[c] for c in labels[: args.shapes]]
    print(
        f"- shapes: {', '.join(names)} (shapes.make_split(1, seed={args.seed}, n_points={n_points}): "
        f"{', '.join(str(len(c)) for c in clouds[: args.shapes])} points), each voxelized at every resolution"
    )
    ctx = make_context()
    runs = []
    with tempfile.TemporaryDirectory(prefix="sparsity_growth_") as tmp:
        for R in args.resolutions:
            for s, name in enumerate(names):
                coords, feats = shapes.voxelize_cloud(clouds[s], R)
                cp, fp = f"{tmp}/coords.npy", f"{tmp}/feats.npy"
                np.save(cp, coords)
                np.save(fp, feats)
                for kind in args.kinds:
                    rec = dict(resolution=R, shape=name, kind=kind, sites_in=coords.shape[0])
                    # Input, 2 activations, oneDNN's blocked copy, and the first layer's im2col buffer (27 x 4
                    # channels) where torch takes that path (it did at 64^3).
                    need = (IN_CHANNELS * 28 + 3 * args.channels) * R**3 * 4
                    if kind == "dense" and need > args.mem_fraction * mem_available():
                        rec.update(status="oom", note=f"OOM: needs ~{need / GIB:.0f} GiB, not run")
                    else:
                        spec = dict(kind=kind, R=R, coords_path=cp, feats_path=fp, C=args.channels,
                                    threads=args.threads, seed=args.seed)
                        rec.update(run_in_child(ctx, stack, spec, args.timeout))
                        print(f"  {R}^3 {name} {LABELS[kind]}: {rec['status']} ({rec['wall_s']:.1f} s)",
                              file=sys.stderr, flush=True)
                    runs.append(rec)
    elapsed = time.perf_counter() - t_start
    summary = summarize(runs, args)
    report(runs, summary, args, elapsed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / ("sparsity_growth_quick" if args.quick else "sparsity_growth")
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in runs:
            for L in r.get("layers") or [{}]:
                row = dict(r, **L)
                if "sites" in L:
                    row["density"] = L["sites"] / r["resolution"] ** 3
                w.writerow({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in row.items()})
    plot(facts, summary, args, f"{stem}.png")
    print(f"\nwrote {stem}.csv and {stem}.png ({elapsed:.0f} s)")


def _sites_by_shape(runs, R, kind):
    return {r["shape"]: [L["sites"] for L in r["layers"]] for r in runs
            if (r["resolution"], r["kind"]) == (R, kind) and r["status"] == "ok"}


def summarize(runs, args):
    """Per (resolution, kind): density per layer over all shapes' cells, MiB held per layer (mean per shape),
    peak MiB (max over shapes and layers), seconds per stack (mean)."""
    out = {}
    for R in args.resolutions:
        for kind in args.kinds:
            ok = [r for r in runs if (r["resolution"], r["kind"]) == (R, kind) and r["status"] == "ok"]
            bad = sorted(
                {r["note"] for r in runs if (r["resolution"], r["kind"]) == (R, kind) and r["status"] != "ok"}
            )
            e = out[R, kind] = {"note": "; ".join(bad)}
            if not ok:
                continue
            per_layer = np.array(
                [[[L["sites"], L["held_mib"], L["peak_mib"], L["layer_ms"]] for L in r["layers"]] for r in ok]
            )  # [shapes, layer, measure]
            e["density"] = per_layer[:, :, 0].sum(0) / (R**3 * len(ok))
            e["input_range"] = per_layer[:, 0, 0].min() / R**3, per_layer[:, 0, 0].max() / R**3
            e["held_mib"] = per_layer[:, :, 1].mean(0)
            e["peak_mib"] = per_layer[:, :, 2].max()
            e["s_per_stack"] = per_layer[:, :, 3].sum(1).mean() / 1e3
        dense, regular = _sites_by_shape(runs, R, "dense"), _sites_by_shape(runs, R, "regular")
        both = dense.keys() & regular.keys()
        out[R, "check"] = f"{sum(dense[s] == regular[s] for s in both)} of {len(both)} shapes" if both else ""
    return out


def report(runs, summary, args, elapsed):
    print(
        "- density: active sites / R^3 over all shapes (input: min-max over shapes). MiB held: RSS growth "
        "after layer 6 over the RSS before the input (activation + cached kernel maps), mean per shape. "
        "Peak: largest RSS growth during any layer, any shape\n"
    )
    head = (
        ["res", "input density", "layers"]
        + [f"L{i}" for i in range(1, LAYERS + 1)]
        + ["MiB held after L6", "peak MiB", "s / stack"]
    )
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for R in args.resolutions:
        ref = next((summary[R, k] for k in args.kinds if "density" in summary[R, k]), None)
        for j, kind in enumerate(args.kinds):
            e = summary[R, kind]
            inp = (
                ""
                if j or ref is None
                else f"{pct(ref['density'][0])} ({pct(ref['input_range'][0])}-{pct(ref['input_range'][1])})"
            )
            cells = [f"{R}^3" if j == 0 else "", inp, LABELS[kind]]
            if "density" in e:
                cells += [pct(v) for v in e["density"][1:]]
                cells += [fmt(e["held_mib"][-1]), fmt(e["peak_mib"]), f"{e['s_per_stack']:.2g}"]
                if e["note"]:
                    cells[-1] += f" ({e['note']})"
            else:
                cells += [e["note"]] + [""] * (LAYERS + 2)
            print("| " + " | ".join(cells) + " |")
    checks = [f"{R}^3: {summary[R, 'check']}" for R in args.resolutions if summary[R, "check"]]
    if checks:
        print(f"\nDense non-zero cells = SparseConv3d sites at every layer: {', '.join(checks)}")
    print(f"elapsed: {elapsed:.0f} s (times under load from other processes are inflated, site counts not)")


def plot(facts, summary, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    # Dense and regular coincide in density, as do subm and topk: wide pale lines under thin ones show both.
    style = {
        "dense": dict(color="0.55", lw=6, alpha=0.5),
        "regular": dict(color="tab:red", ls="--", marker="s"),
        "subm": dict(color="tab:blue", lw=6, alpha=0.4),
        "topk": dict(color="tab:green", ls="--", marker="^"),
    }
    res = args.resolutions
    fig, axes = plt.subplots(2, len(res), figsize=(3.3 * len(res) + 1, 7), squeeze=False)
    layers = np.arange(LAYERS + 1)
    for j, R in enumerate(res):
        top, bottom = axes[0][j], axes[1][j]
        for kind in args.kinds:
            e = summary[R, kind]
            if "density" in e:
                top.plot(layers, 100 * e["density"], label=LABELS[kind], ms=4, **style[kind])
                held = np.where(e["held_mib"] >= 0.1, e["held_mib"], np.nan)  # below: not resolved by RSS
                bottom.plot(layers, held, label=LABELS[kind], ms=4, **style[kind])
            elif kind == "dense":
                bottom.text(
                    0.5,
                    0.95,
                    f"dense: {e['note']}",
                    transform=bottom.transAxes,
                    ha="center",
                    va="top",
                    fontsize=8,
                )
        top.set_title(f"{R}^3")
        for ax in (top, bottom):
            ax.set(yscale="log", xticks=layers)
            ax.set_ylim(bottom=0.1 if ax is bottom else None)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else ""))
            ax.grid(True, which="both", alpha=0.25)
        bottom.set_xlabel("layer (0 = input)")
    axes[0][0].set_ylabel("active sites (% of R^3)")
    axes[1][0].set_ylabel("memory held after the layer\n(RSS growth, MiB per shape)")
    axes[0][0].legend(fontsize=8, loc="center right")
    fig.suptitle(
        f"Active sites and memory through {LAYERS} 3x3x3 convolutions, {args.channels} channels, "
        f"mean over {args.shapes} shapes. {facts['cpu']}, torch {facts['torch']}, {args.threads} threads",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help=f"resolutions {QUICK_RES}, 3 shapes (< 1 min on 2 cores)"
    )
    ap.add_argument("--resolutions", type=int, nargs="+", help=f"default {FULL_RES}")
    ap.add_argument(
        "--shapes", type=int, help="clouds, one per class in CLASS_NAMES order (default 6, --quick 3)"
    )
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--points-per-cell", type=float, default=10.0, help="points per cloud = this x R_max^2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--mem-fraction",
        type=float,
        default=0.6,
        help="skip dense stacks whose estimated need exceeds this fraction of MemAvailable",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before one stack is killed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    args.resolutions = sorted(args.resolutions or (QUICK_RES if args.quick else FULL_RES))
    args.shapes = args.shapes or (3 if args.quick else 6)
    if not 1 <= args.shapes <= 6:
        ap.error("--shapes must be in 1..6")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
