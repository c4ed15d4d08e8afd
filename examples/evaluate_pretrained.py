#!/usr/bin/env python
"""Scores of the shipped pretrained model on real labelled LAS/LAZ files it was not trained on, next to a
classical ground filter (Cloth Simulation Filter, the `cloth-simulation-filter` package) run on the same files.

For every file: the model classifies it (sparseconv.lidar.classify_file, as `sparseconv classify` does), then
* ground / non-ground (reference code 2 against everything else; noise codes 7 and 18 left out): overall
  accuracy, kappa and ground IoU, for the model and for CSF;
* classes (vegetation 3/4/5 merged; references 0, 1 "unclassified" and codes >= 64 left out, since they say
  nothing about what the point is): overall accuracy, kappa, per-class IoU.
Prints markdown tables and writes a confusion PNG per file into --out-dir, plus confusion_all.png: every file's
ground / non-ground confusion for the model and for CSF side by side, and its class confusion.

--single-return also scores, for every multi-return file, a copy that a single-return sensor could have recorded:
its first returns only, each marked return 1 of 1 (issue 16's suburban tile came from such a sensor, and a
generated single-return tile is only as good a check as the generator's canopies).

    pip install cloth-simulation-filter        # the classical baseline (optional: skipped when missing)
    python examples/evaluate_pretrained.py     # files from ../shared/data/las
"""
import argparse
import contextlib
import glob
import os
import sys
import tempfile
import time

import numpy as np

from sparseconv.lidar import classify_file, load_checkpoint
from sparseconv.lidar.curves import plot_confusion
from sparseconv.lidar.features import ground_cell_size, local_density
from sparseconv.lidar.outliers import low_outliers
from sparseconv.lidar.windows import grid_shape, split_by_id, tile_index, window_members
from sparseconv.metrics import confusion_matrix, scores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VEG = {3: 5, 4: 5}
NOISE = (7, 18)


def read(path):
    import laspy

    las = laspy.read(path)
    return np.stack([las.x, las.y, las.z], 1), np.asarray(las.classification, np.int64)


@contextlib.contextmanager
def quiet_stdout():
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def csf_ground(xyz, resolution, tile=128.0, overlap=8.0):
    """Boolean ground mask from the Cloth Simulation Filter (Zhang et al. 2016) run tile by tile with the same
    tiles and overlap as the model (one cloth over a whole file sags into its empty parts: append-bug.laz is a
    thin strip and a corner of a 1 km box), or None without the package. rigidness 2 (relief), slope
    post-processing on, threshold 0.5 m, 500 iterations; low outliers removed first (called non-ground): CSF
    drops its cloth onto the inverted cloud, so a few points far below the terrain become peaks that hold the
    cloth up (sparseconv.lidar.outliers; the model's classify does the same)."""
    try:
        import CSF
    except ImportError:
        return None
    keep = np.flatnonzero(~low_outliers(xyz[:, 0], xyz[:, 1], xyz[:, 2]))
    full = np.zeros(len(xyz), bool)
    full[keep] = csf_tiles(xyz[keep], resolution, tile, overlap, CSF)
    return full


def csf_tiles(xyz, resolution, tile, overlap, CSF):
    x0, y0 = xyz[:, 0].min(), xyz[:, 1].min()
    nx, ny = grid_shape(x0, y0, xyz[:, 0].max(), xyz[:, 1].max(), tile)
    rows, ids = window_members(xyz[:, 0], xyz[:, 1], x0, y0, tile, overlap, nx, ny)
    core = tile_index(xyz[:, 0], x0, tile, nx) * ny + tile_index(xyz[:, 1], y0, tile, ny)
    mask = np.zeros(len(xyz), bool)
    for tid, r in split_by_id(rows, ids):
        if r.size < 10:
            continue
        csf = CSF.CSF()
        csf.params.bSloopSmooth = True
        csf.params.cloth_resolution = resolution
        csf.params.rigidness = 2
        csf.params.class_threshold = 0.5
        csf.params.time_step = 0.65
        csf.params.interations = 500
        pts = xyz[r]
        csf.setPointCloud(pts - pts.min(0))
        ground, other = CSF.VecInt(), CSF.VecInt()
        with quiet_stdout():  # CSF's C++ core logs every stage to fd 1, which would bury the tables
            csf.do_filtering(ground, other, exportCloth=False)
        g = np.zeros(r.size, bool)
        g[np.asarray(ground, np.int64)] = True
        own = core[r] == tid
        mask[r[own]] = g[own]
    return mask


def single_return_copy(path, out):
    """Write path's first returns, each marked 1 of 1, to out; False (nothing written) for a single-return file."""
    import laspy

    las = laspy.read(path)
    first = np.asarray(las.return_number) <= 1
    if int(np.asarray(las.number_of_returns).max(initial=1)) <= 1:
        return False
    copy = laspy.LasData(las.header)
    copy.points = las.points[first]
    copy.return_number = np.ones(int(first.sum()), np.uint8)
    copy.number_of_returns = np.ones(int(first.sum()), np.uint8)
    copy.write(out)
    return True


def ground_scores(ref, is_ground):
    keep = ~np.isin(ref, NOISE)
    cm = confusion_matrix((ref[keep] == 2).astype(np.int64), is_ground[keep].astype(np.int64), [0, 1])
    s = scores(cm)
    return s["overall_accuracy"], s["kappa"], s["iou"][1], cm


def plot_panels(panels, path):
    """One row per file: row-normalised confusion matrices (title, cm, labels), shares printed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = max(len(row) for row in panels)
    fig, axes = plt.subplots(len(panels), ncol, figsize=(3.6 * ncol, 3.4 * len(panels)), squeeze=False)
    for r, row in enumerate(panels):
        for c in range(ncol):
            ax = axes[r][c]
            if c >= len(row):
                ax.axis("off")
                continue
            title, cm, labels = row[c]
            norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("predicted", fontsize=7)
            ax.set_ylabel("reference", fontsize=7)
            for i in range(len(labels)):
                for j in range(len(labels)):
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="labelled LAS/LAZ (default: ../shared/data/las/*.la[sz])")
    ap.add_argument("--model", help="checkpoint (default: the shipped pretrained model)")
    ap.add_argument("--out-dir", help="default: benchmarks/results/pretrained (pretrained-no-roof-check with "
                    "--no-roof-check)")
    ap.add_argument("--single-return", action="store_true",
                    help="also score each multi-return file's first returns, marked 1 of 1")
    ap.add_argument("--no-roof-check", dest="roof_check", action="store_false",
                    help="the network's labels as they are (classify's roof check off)")
    args = ap.parse_args()
    args.out_dir = args.out_dir or os.path.join(ROOT, "benchmarks", "results",
                                                "pretrained" if args.roof_check else "pretrained-no-roof-check")
    files = args.files or sorted(glob.glob(os.path.join(ROOT, "..", "shared", "data", "las", "*.la[sz]")))
    if not files:
        raise SystemExit("no labelled files: pass some, or put ../shared/data/las beside the project")
    os.makedirs(args.out_dir, exist_ok=True)
    model, config, _ = load_checkpoint(args.model)
    with tempfile.TemporaryDirectory() as copies:
        sources = []
        for path in files:
            sources.append(path)
            single = os.path.join(copies, os.path.splitext(os.path.basename(path))[0] + "-single-return.laz")
            if args.single_return and single_return_copy(path, single):
                sources.append(single)
        evaluate(sources, model, config, args.out_dir, args.roof_check)


def evaluate(files, model, config, out_dir, roof_check=True):
    ground_rows, class_rows, panels = [], [], []
    for path in files:
        name = os.path.basename(path)
        xyz, ref = read(path)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, name)
            t0 = time.perf_counter()
            classify_file(path, out, model, config, progress=False, roof_check=roof_check)
            t_model = time.perf_counter() - t0
            _, pred = read(out)
        density = local_density(xyz[:, 0], xyz[:, 1])
        res = ground_cell_size(density)
        t0 = time.perf_counter()
        csf = csf_ground(xyz, res)
        t_csf = time.perf_counter() - t0
        *ours, cm_ours = ground_scores(ref, pred == 2)
        row = [(f"{name}: model, ground / non-ground", cm_ours, ["non-g", "ground"])]
        if csf is not None:
            *theirs, cm_csf = ground_scores(ref, csf)
            row.append((f"{name}: CSF, ground / non-ground", cm_csf, ["non-g", "ground"]))
        else:
            theirs = (float("nan"),) * 3
        panels.append(row)
        ground_rows.append((name, len(ref), density, *ours, t_model, *theirs, t_csf, res))
        lut = np.arange(256)
        for a, b in VEG.items():
            lut[a] = b
        r, p = lut[ref], lut[pred]
        known = (r >= 2) & (r < 64)
        # Predicted codes count too: a point of a known class called something else is an error.
        classes = sorted(set(np.unique(r[known]).tolist()) | set(np.unique(p[known]).tolist()))
        if len(set(np.unique(r[known]).tolist())) > 2:
            cm = confusion_matrix(r[known], p[known], classes)
            s = scores(cm)
            class_rows.append((name, int(known.sum()), s["overall_accuracy"], s["kappa"],
                               ", ".join(f"{c}: {iou:.2f}" for c, iou in zip(classes, s["iou"]))))
            png = os.path.join(out_dir, os.path.splitext(name)[0] + "_confusion.png")
            plot_confusion(cm, classes, png)
            panels[-1].append((f"{name}: model, classes (3/4/5 -> 5)", cm, [str(c) for c in classes]))
    print("\nGround / non-ground (reference code 2 vs the rest; noise left out)\n")
    print("| file | points | pts/m2 | model OA | model kappa | model ground IoU | model s "
          "| CSF OA | CSF kappa | CSF ground IoU | CSF s | CSF cloth res. (m) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in ground_rows:
        name, n, dens, *v = row
        print(f"| {name} | {n:,} | {dens:.2f} | " + " | ".join(f"{x:.3f}" if i % 4 != 3 else f"{x:.1f}"
                                                            for i, x in enumerate(v[:8])) + f" | {v[8]:.1f} |")
    if class_rows:
        print("\nClasses (vegetation 3/4/5 -> 5; reference codes 0, 1 and >= 64 left out)\n")
        print("| file | points scored | OA | kappa | IoU per class |")
        print("|---|---|---|---|---|")
        for name, n, oa, kappa, ious in class_rows:
            print(f"| {name} | {n:,} | {oa:.3f} | {kappa:.3f} | {ious} |")
    plot_panels(panels, os.path.join(out_dir, "confusion_all.png"))
    print(f"\nconfusion PNGs in {out_dir} (all files: confusion_all.png)")


if __name__ == "__main__":
    main()
