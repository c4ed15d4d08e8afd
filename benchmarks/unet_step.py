#!/usr/bin/env python
"""A whole training step, spconv against sparseconv: one 4-level U-Net written once against spconv's API, built
from `spconv.pytorch` and from `sparseconv.spconv.pytorch` (only the module differs; spconv's initial weights
are loaded into ours with strict=True, so both train the very same network).

The network: per level a SubMConv3d + BatchNorm + ReLU block, a SparseConv3d (3x3x3, stride 2) down to the next
level, and on the way up a SparseInverseConv3d back (by indice_key), the skip concatenated and merged by a
SubMConv3d block; a 1x1 head and cross-entropy on every voxel. The step: forward, loss, backward, optimizer
(SGD with momentum), under torch.autocast in --dtype float16/bfloat16 (with a GradScaler for float16 on CUDA),
or in float32.

Each library runs in a fresh child process on the same scene (a LiDAR-like street at 0.1 m voxels,
``sparseconv.data.lidar_scene``), features and labels; times are medians of --repeats steps after --warmup
(CUDA: synchronised before the clock is read); memory is the peak of torch's CUDA allocator, or the peak RSS
growth over the set-up on the CPU. The first step's loss of both is printed (same weights, same data: they agree
to rounding). Prints the machine facts and a table with the ratio ours / spconv (< 1: we are faster), writes
``results/unet_step_<device>.{csv,png}``. Exits 0, saying why, without spconv or without CUDA.

    python benchmarks/unet_step.py --device cuda                    # 1M voxels, fp16 autocast (issue target)
    python benchmarks/unet_step.py --device cpu --voxels 100000     # float32, on this VM's CPU wheel of spconv
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_conv as bc  # noqa: E402  (machine facts, RSS helpers, scene voxelization)
from compare_peers import write_atomic  # noqa: E402  (temporary file, then rename)

LIBS = ("spconv", "sparseconv")
WIDTHS = (32, 64, 128, 256)


def build_unet(spconv, cin, classes, widths=WIDTHS):
    import torch
    from torch import nn

    def block(conv, c):
        return spconv.SparseSequential(conv, nn.BatchNorm1d(c, eps=1e-3, momentum=0.01), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = block(spconv.SubMConv3d(cin, widths[0], 3, padding=1, bias=False, indice_key="subm0"),
                              widths[0])
            self.enc = nn.ModuleList(
                block(spconv.SubMConv3d(c, c, 3, padding=1, bias=False, indice_key=f"subm{i}"), c)
                for i, c in enumerate(widths))
            self.down = nn.ModuleList(
                block(spconv.SparseConv3d(widths[i], widths[i + 1], 3, stride=2, padding=1, bias=False,
                                          indice_key=f"down{i}"), widths[i + 1])
                for i in range(len(widths) - 1))
            self.up = nn.ModuleList(
                block(spconv.SparseInverseConv3d(widths[i + 1], widths[i], 3, bias=False, indice_key=f"down{i}"),
                      widths[i])
                for i in range(len(widths) - 1))
            self.merge = nn.ModuleList(
                block(spconv.SubMConv3d(2 * widths[i], widths[i], 3, padding=1, bias=False, indice_key=f"subm{i}"),
                      widths[i])
                for i in range(len(widths) - 1))
            self.head = spconv.SubMConv3d(widths[0], classes, 1, bias=True)

        def forward(self, x):
            x = self.stem(x)
            skips = []
            for i, enc in enumerate(self.enc):
                x = enc(x)
                if i < len(self.down):
                    skips.append(x)
                    x = self.down[i](x)
            for i in reversed(range(len(self.up))):
                x = self.up[i](x)
                x = x.replace_feature(torch.cat([x.features, skips[i].features], 1))
                x = self.merge[i](x)
            return self.head(x).features

    return UNet()


def scene(voxels, seed, cin, classes):
    """(features, int32 indices [N, 4], spatial_shape, labels) of a LiDAR-like scene with about `voxels` voxels."""
    import torch

    from sparseconv.data import lidar_scene

    points = lidar_scene(voxels, voxel_size=0.1, seed=seed)[0]
    coords, shape, _ = bc.voxelize_scene(points, 0.1)
    feats, labels = scene_features(coords.shape[0], seed, cin, classes)
    return feats, coords, list(shape), labels


def scene_features(n, seed, cin, classes):
    """Random input features [n, cin] and labels [n] (seeded)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cin, generator=g), torch.randint(0, classes, (n,), generator=g)


def load_lib(name):
    if name == "sparseconv":
        import sparseconv.spconv.pytorch as sp
        return sp, None
    import peers
    sp = peers.load_spconv()
    return sp, (None if sp is not None else peers.spconv_error())


def run_child(args):
    """One library: build, load the shared initial weights, time the steps; prints one JSON line."""
    import torch

    torch.manual_seed(0)
    dev = torch.device(args.device)
    spconv, err = load_lib(args.lib)
    if spconv is None:
        print(json.dumps({"lib": args.lib, "error": err}))
        return 0
    data = torch.load(args.data)
    feats, coords, shape, labels = (data[k] for k in ("feats", "coords", "shape", "labels"))
    model = build_unet(spconv, feats.shape[1], args.classes)
    model.load_state_dict(torch.load(args.weights), strict=True)
    model = model.to(dev).train()
    feats, coords, labels = feats.to(dev), coords.to(dev), labels.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    amp = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(args.dtype)
    scaler = torch.amp.GradScaler(enabled=amp is torch.float16 and dev.type == "cuda")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        x = spconv.SparseConvTensor(features=feats, indices=coords, spatial_shape=shape, batch_size=1)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss)

    base_rss = bc.rss_now_mib()
    bc.reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    first_loss = step()  # the maps of this scene are built inside every step, as in training on new scenes
    times = []
    for i in range(args.warmup + args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    mem = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
           else bc.rss_peak_mib() - base_rss)
    print(json.dumps({"lib": args.lib, "step_ms": 1e3 * median(times), "times_ms": [1e3 * t for t in times],
                      "first_loss": first_loss, "peak_mib": mem, "voxels": int(coords.shape[0])}))
    return 0


def write_outputs(rows, facts, args):
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stem = out_dir / f"unet_step_{args.device}"
    buf = [",".join(["lib", "device", "dtype", "voxels", "step_ms", "peak_mib", "ratio_vs_spconv", "first_loss"])]
    for r in rows:
        buf.append(",".join(str(r.get(k, "")) for k in ("lib", "device", "dtype", "voxels", "step_ms", "peak_mib",
                                                          "ratio", "first_loss")))
    write_atomic(Path(f"{stem}.csv"), lambda t: Path(t).write_text("\n".join(buf) + "\n"))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [f"{stem}.csv"]
    ok = [r for r in rows if "step_ms" in r]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([r["lib"] for r in ok], [r["step_ms"] for r in ok], color=["#888888", "#1f77b4"][:len(ok)])
    for i, r in enumerate(ok):
        ax.text(i, r["step_ms"], f"{r['step_ms']:.1f} ms", ha="center", va="bottom")
    ax.set_ylabel("training step, median (ms)")
    ax.set_title(f"4-level U-Net, {ok[0]['voxels'] if ok else '?'} voxels, {args.dtype}, {args.device}\n"
                 f"{facts.get('gpu') or facts['cpu']}", fontsize=8)
    fig.tight_layout()
    write_atomic(Path(f"{stem}.png"), lambda t: fig.savefig(t, format="png", dpi=120))
    return [f"{stem}.csv", f"{stem}.png"]


def measure(args, log=print, coords=None, shape=None):
    """Both libraries' training steps on one scene (made here unless coords / shape are given): (rows, facts).

    args: device, voxels, dtype, cin, classes, repeats, warmup, seed (as main's); optional: libs (default both),
    timeout (seconds per child). A row: lib, device, dtype and step_ms, peak_mib, first_loss, voxels, ratio
    (ours / spconv), or error.
    """
    import tempfile

    import peers
    import torch

    facts = bc.machine_facts()
    if args.device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
    spconv_ok = "spconv" in getattr(args, "libs", LIBS) and peers.load_spconv() is not None
    log(f"machine: {facts['cpu']}, {facts['cores']} cores; {facts.get('gpu', 'no GPU')}; torch {torch.__version__}; "
        f"spconv {peers.spconv_version() if spconv_ok else 'not used: ' + str(peers.spconv_error() or 'not requested')}")
    with tempfile.TemporaryDirectory() as tmp:
        if coords is None:
            feats, coords, shape, labels = scene(args.voxels, args.seed, args.cin, args.classes)
        else:
            feats, labels = scene_features(coords.shape[0], args.seed, args.cin, args.classes)
        data, weights = os.path.join(tmp, "scene.pt"), os.path.join(tmp, "weights.pt")
        torch.save({"feats": feats, "coords": coords, "shape": list(shape), "labels": labels}, data)
        # The initial weights: spconv's own initialisation when it imports (ours reproduces it for a seed anyway).
        import sparseconv.spconv.pytorch as ours
        torch.manual_seed(args.seed)
        torch.save(build_unet(peers.load_spconv() if spconv_ok else ours, args.cin, args.classes).state_dict(),
                   weights)
        log(f"scene: {coords.shape[0]} voxels, grid {list(shape)}; U-Net widths {WIDTHS}; {args.dtype}; "
            f"{args.repeats} steps after {args.warmup} warm-up, medians")
        rows = []
        for lib in LIBS:
            if lib == "spconv" and not spconv_ok:
                rows.append({"lib": lib, "error": peers.spconv_error() or "not requested"})
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "--lib", lib, "--data", data, "--weights", weights,
                   "--device", args.device, "--dtype", args.dtype, "--classes", str(args.classes),
                   "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                      timeout=getattr(args, "timeout", None))
            except subprocess.TimeoutExpired:
                rows.append({"lib": lib, "error": f"timed out after {args.timeout:.0f} s"})
                continue
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                rows.append({"lib": lib, "error": f"rc {proc.returncode}: {proc.stderr.strip()[-400:]}"})
                continue
            rows.append(json.loads(lines[-1]))
    ref = next((r for r in rows if r["lib"] == "spconv" and "step_ms" in r), None)
    for r in rows:
        r.update(device=args.device, dtype=args.dtype)
        if "step_ms" in r and ref is not None:
            r["ratio"] = round(r["step_ms"] / ref["step_ms"], 3) if r["lib"] == "sparseconv" else 1.0
    return rows, facts


def table(rows):
    """The markdown table of measure()'s rows."""
    out = ["| library | voxels | step (ms) | peak memory (MiB) | ours / spconv | first loss |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "step_ms" not in r:
            out.append(f"| {r['lib']} | - | unavailable: {r['error']} | | | |")
            continue
        out.append(f"| {r['lib']} | {r['voxels']} | {r['step_ms']:.1f} | {r['peak_mib']:.0f} | "
                   f"{r.get('ratio', 'n/a')} | {r['first_loss']:.6f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--voxels", type=int, help="scene size (default: 1M on cuda, 100k on cpu)")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                    help="autocast dtype (default: float16 on cuda, float32 on cpu)")
    ap.add_argument("--cin", type=int, default=4)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lib", choices=LIBS, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.voxels = args.voxels or (1_000_000 if args.device == "cuda" else 100_000)
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    if args.lib:
        return run_child(args)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("unet_step: --device cuda, but torch sees no CUDA device; nothing measured")
        return 0
    rows, facts = measure(args, log=print)
    print("\n" + table(rows))
    print("wrote " + ", ".join(write_outputs(rows, facts, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
