"""The `sparseconv` command line. Errors print one line and exit non-zero, never a traceback."""
import argparse
import os
import sys

import numpy as np

from .io import OPEN3D_SUFFIXES, LasError, is_open3d_file, las_info, read_chunks
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
    if args.ignore:
        # Points whose reference code says nothing (e.g. 1 "unclassified") are left out; whatever the model
        # predicted elsewhere still counts, so predicting an ignored code is an error, not a pass.
        scored = ~np.isin(ref, args.ignore)
        pred, ref = pred[scored], ref[scored]
    classes = sorted(set(np.unique(ref).tolist()) | set(np.unique(pred).tolist()))
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
        from .lidar.curves import plot_confusion

        plot_confusion(cm, classes, args.png)
        print(f"wrote {args.png}")


def _las_files(items, what, suffixes=(".las", ".laz")):
    """Files named, plus the files with these suffixes in folders named (sorted)."""
    out = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(suffixes))
            if not found:
                raise LasError(f"{item}: folder holds no {'/'.join(suffixes)} file")
            out += found
        elif not os.path.isfile(item):
            raise LasError(f"{item}: no such file or folder")
        elif not item.lower().endswith(suffixes):
            raise LasError(f"{item}: expected a {' or '.join(suffixes)} file ({what})")
        else:
            out.append(item)
    return out


def cmd_generate(args):
    from .data.airborne import generate_tiles

    if args.tiles < 1:
        raise ValueError(f"--tiles: expected at least 1, got {args.tiles}")
    kwargs = {"scene": args.scene} if args.scene else {}
    if args.single_return:
        kwargs["single_return"] = True
    paths = generate_tiles(args.out_dir, args.tiles, seed=args.seed, size_m=args.size, density=args.density,
                           suffix="." + args.format, progress=not args.quiet, **kwargs)
    print(f"wrote {len(paths)} tiles to {args.out_dir}")


def cmd_train(args):
    from . import distributed as sd
    from .lidar import train

    paths = _las_files(args.data, "DATA")
    sd.init()  # under torchrun: data-parallel over its processes; else a no-op
    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    if args.resume and args.init:
        raise ValueError("--resume and --init: pass one of them")
    channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
    train(paths, args.output, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
          val_fraction=args.val_fraction, seed=args.seed, classes=classes, init=args.init, resume=args.resume,
          overwrite=args.overwrite, progress=not args.quiet, curves=args.curves,
          samples_per_epoch=args.samples_per_epoch, voxel_size=args.voxel_size,
          tile_size=args.tile_size, overlap=args.overlap, channels=channels)
    if sd.is_main():
        print(f"wrote {args.output} and {args.curves or os.path.splitext(args.output)[0] + '_curves.png'}")
    sd.cleanup()


def cmd_classify(args):
    import time

    import torch

    from . import distributed as sd
    from .lidar import load_checkpoint
    from .lidar.classify import classify_files

    paths = _las_files(args.inputs, "IN", (".las", ".laz") + OPEN3D_SUFFIXES)
    rank, world = sd.init()  # under torchrun each process classifies its share of the files
    to_folder = len(paths) > 1 or os.path.isdir(args.inputs[0]) or os.path.isdir(args.output) \
        or not args.output.lower().endswith((".las", ".laz"))
    if to_folder:
        os.makedirs(args.output, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {args.device} requested, but torch sees no CUDA device")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected at least 1, got {args.threads}")
    if args.threads is not None:  # lazrs's thread pool in this process (set before its first use) follows
        os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    if args.batch_points < 1:
        raise ValueError(f"--batch-points: expected at least 1, got {args.batch_points}")
    device = args.device
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    tag = f"[rank {rank}] " if world > 1 else ""
    model, config, _ = load_checkpoint(args.model)
    done, t_start = 0, time.perf_counter()
    mine = sd.shard_balanced(paths, [os.path.getsize(p) for p in paths])  # by bytes, not count

    def output(path):
        name = os.path.basename(path)
        if is_open3d_file(path):  # PLY/PCD/XYZ/PTS: classified into a LAZ of the same name
            name = os.path.splitext(name)[0] + ".laz"
        return os.path.join(args.output, name) if to_folder else args.output

    # Files overlap: the next is decoded while one's network runs, one is encoded while the next is classified.
    results = classify_files([(p, output(p)) for p in mine], model, config, overwrite=args.overwrite, device=device,
                             progress=not args.quiet and world == 1, tile_size=args.tile_size, threads=args.threads,
                             batch_points=args.batch_points)
    for path, dst, r in results:
        dt = r["seconds"]["total"]
        done += r["points"]
        print(f"{tag}{path} -> {dst}: {r['points']:,} points in {dt:.1f} s ({r['points'] / dt:,.0f} points/s; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items() if k != "total") + ")")
        for code, n in r["classes"].items():
            print(f"  {code:3d} {_name(code):18s} {n:>12,}  {100 * n / r['points']:5.1f}%")
        if args.png:
            png = os.path.splitext(dst)[0] + ".png"
            _topdown(dst, png)
            print(f"  wrote {png}")
    dt = time.perf_counter() - t_start
    if world == 1 and len(mine) > 1:
        print(f"{len(mine)} files, {done:,} points in {dt:.1f} s ({done / dt:,.0f} points/s)")
    if world > 1:
        total = sd.reduce_sum({"points": done, "files": len(mine)})
        if rank == 0:
            print(f"{world} processes: {int(total['files'])} files, {int(total['points']):,} points in {dt:.1f} s "
                  f"({total['points'] / dt:,.0f} points/s)")
    sd.cleanup()


def _topdown(path, png):
    from .lidar.curves import plot_topdown

    parts = [(np.asarray(p.x), np.asarray(p.y), np.asarray(p.z), np.asarray(p.classification))
             for p in read_chunks(path)]
    x, y, z, c = (np.concatenate(a) for a in zip(*parts))
    plot_topdown(x, y, c.astype(np.int64), png, title=os.path.basename(path), z=z)


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
    p.add_argument("--ignore", type=int, nargs="*", default=[], help="reference codes left out: points labelled so in the reference are not scored "
                                                              "(predictions of any code still count)")
    p.add_argument("--png", help="also write the confusion matrix as a PNG")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("generate", help="write generated airborne LiDAR tiles with ASPRS labels (training data)")
    p.add_argument("out_dir")
    p.add_argument("--tiles", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=float, default=100.0, help="tile side in metres (default 100)")
    p.add_argument("--density", type=float, default=8.0, help="pulses per m2 (default 8)")
    p.add_argument("--scene", choices=["rural", "suburban", "urban", "forest"], help="default: random per tile")
    p.add_argument("--format", choices=["las", "laz"], default="laz")
    p.add_argument("--single-return", action="store_true",
                   help="a sensor recording one return per pulse (the first hit): every point is return 1 of 1")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train a point classifier on labelled LAS/LAZ files")
    p.add_argument("data", nargs="+", metavar="DATA", help="labelled .las/.laz files or folders of them")
    p.add_argument("-o", "--output", required=True, help="checkpoint, written after every epoch")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4, help="windows per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--samples-per-epoch", type=int,
                   help="random windows per epoch (default: one per training piece, at least 64)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="held-out share: whole files when there are 5 or more, else pieces of files")
    p.add_argument("--voxel-size", type=float, help="metres (default 1.0)")
    p.add_argument("--tile-size", type=float, help="metres (default 64)")
    p.add_argument("--overlap", type=float, help="context around each tile, metres (default 8)")
    p.add_argument("--channels", help="SparseUNet widths per level, e.g. 16,32,64,96,128")
    p.add_argument("--classes", help="ASPRS codes to learn, e.g. 2,3,4,5,6,9 (default: all present); "
                                     "points of other codes are ignored")
    p.add_argument("--init", help="fine-tune this model (e.g. the pretrained one); its features, voxel and tile "
                                  "size are kept, a different class map gets a new output layer")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint -o from its last epoch")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curves", help="PNG of the training curves (default: next to the checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("classify", help="classify LAS/LAZ files (ASPRS codes) with a trained model")
    p.add_argument("inputs", nargs="+", metavar="IN",
                   help=".las/.laz files or folders of them; .ply/.pcd/.xyz/.pts through Open3D (written as .laz)")
    p.add_argument("-o", "--output", required=True, help="output file, or folder for several inputs")
    p.add_argument("--model", help="checkpoint from `sparseconv train` (default: the shipped pretrained model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tile-size", type=float, default=128.0,
                   help="inference tile in metres (default 128; the model's overlap is added on every side)")
    p.add_argument("--threads", type=int, help="cores to use (default: torch's thread count, all cores unless "
                                               "OMP_NUM_THREADS says otherwise); 1: everything on one thread")
    p.add_argument("--batch-points", type=int, default=300_000,
                   help="points per forward (default 300000); other values move a few labels (float rounding), "
                        "larger ones may run faster on a GPU")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--png", action="store_true", help="also write a top-down PNG coloured by class")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_classify)
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
    except Exception as e:  # anything else: still one line; SPARSECONV_DEBUG=1 shows the traceback
        if os.environ.get("SPARSECONV_DEBUG"):
            raise
        print(f"sparseconv {args.command}: unexpected error: {type(e).__name__}: {e} "
              "(set SPARSECONV_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
