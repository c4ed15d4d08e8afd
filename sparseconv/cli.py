"""The `sparseconv` command line. Errors print one line and exit non-zero, never a traceback."""
import argparse
import sys

import numpy as np

from .io import LasError, las_info, read_chunks
from .metrics import confusion_matrix, parse_remap, scores

ASPRS = {0: "never classified", 1: "unclassified", 2: "ground", 3: "low vegetation", 4: "medium vegetation",
         5: "high vegetation", 6: "building", 7: "low point (noise)", 9: "water", 14: "wire conductor",
         17: "bridge deck", 18: "high noise"}


def _name(code):
    return ASPRS.get(code, "user-defined" if code >= 64 else "reserved")


def cmd_info(args):
    for path in args.files:
        info = las_info(path)
        print(f"{path}: {info['points']:,} points, LAS {info['version']}, point format {info['point_format']}")
        lo, hi = info["bounds_min"], info["bounds_max"]
        print("  bounds: " + ", ".join(f"{a} {lo[i]:.2f} .. {hi[i]:.2f}" for i, a in enumerate("xyz")))
        if info["extra_dimensions"]:
            print(f"  extra dimensions: {', '.join(info['extra_dimensions'])}")
        if info["crs"]:
            print(f"  CRS: {info['crs']}")
        print("  classes:")
        for code, n in info["classes"].items():
            print(f"    {code:3d} {_name(code):18s} {n:>12,}  {100 * n / info['points']:5.1f}%")


def _labels(path):
    return np.concatenate([np.asarray(p.classification, np.int64) for p in read_chunks(path)])


def cmd_evaluate(args):
    pred = _labels(args.predicted)
    ref = _labels(args.reference or args.predicted)
    if pred.shape != ref.shape:
        raise LasError(f"{args.predicted}: {pred.shape[0]:,} points, but the reference has {ref.shape[0]:,}")
    remap = parse_remap(args.remap) if args.remap else {}
    if remap:
        lut = np.arange(256)
        for src, dst in remap.items():
            lut[src] = dst
        pred, ref = lut[pred], lut[ref]
    classes = sorted(set(np.unique(ref).tolist()) | set(np.unique(pred).tolist()))
    if args.ignore:
        classes = [c for c in classes if c not in set(args.ignore)]
    cm = confusion_matrix(ref, pred, classes)
    s = scores(cm)
    print(f"points: {int(cm.sum()):,}  overall accuracy: {s['overall_accuracy']:.4f}  kappa: {s['kappa']:.4f}")
    print(f"{'class':>24s} {'IoU':>7s} {'support':>10s}")
    for c, iou, n in zip(classes, s["iou"], s["support"]):
        print(f"{c:4d} {_name(c):>19s} {iou:7.4f} {n:10,}")
    print("confusion (rows: reference, columns: predicted): " + " ".join(str(c) for c in classes))
    for c, row in zip(classes, cm):
        print(f"{c:4d} " + " ".join(f"{v:9d}" for v in row))
    if args.png:
        _confusion_png(cm, classes, args.png)
        print(f"wrote {args.png}")


def _confusion_png(cm, classes, path):
    import os
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set(xlabel="predicted", ylabel="reference", title="confusion (row-normalised)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def build_parser():
    ap = argparse.ArgumentParser(prog="sparseconv", description="Sparse 3D CNNs for point clouds: LAS/LAZ tools.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="points, bounds, point format and class histogram of LAS/LAZ files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("evaluate", help="accuracy, kappa, per-class IoU and confusion of a classified file")
    p.add_argument("predicted", help="classified LAS/LAZ")
    p.add_argument("--reference", help="labelled LAS/LAZ with the same points in the same order "
                                       "(default: the predicted file's own labels)")
    p.add_argument("--remap", help="merge classes before scoring, e.g. '3,4,5:5' (vegetation)")
    p.add_argument("--ignore", type=int, nargs="*", default=[], help="class codes left out of the scores")
    p.add_argument("--png", help="also write the confusion matrix as a PNG")
    p.set_defaults(func=cmd_evaluate)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (LasError, ValueError, OSError) as e:
        print(f"sparseconv {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sparseconv {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
