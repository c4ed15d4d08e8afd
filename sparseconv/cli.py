"""The `sparseconv` command line. Errors print one line and exit non-zero, never a traceback."""
import os
import signal
import sys
import threading

import numpy as np

from . import _cli_args, _early
from ._cli_args import classify_inputs, classify_output, las_files
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

    paths = las_files(args.data, "DATA")
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
    # The first input's decoding may have started before torch was imported (sparseconv/_early.py): taken here
    # and handed to classify_files, which uses it if it is that file's, else ends it; ended in any case below.
    early = _early.take()
    try:
        _classify(args, early)
    finally:
        if early is not None:
            early.close()


def _classify(args, early):
    import gc
    import time

    import torch

    from . import distributed as sd
    from .lidar import load_checkpoint
    from .lidar.classify import classify_files

    paths, to_folder = classify_inputs(args)
    rank, world = sd.init()  # under torchrun each process classifies its share of the files
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
    # torch's objects and the model live as long as the command: the cyclic collector skips them from here on, in
    # its passes during the run and in the last one at exit (about 0.25 s of one core saved at exit here)
    gc.freeze()
    done, t_start = 0, time.perf_counter()
    mine = sd.shard_balanced(paths, [os.path.getsize(p) for p in paths])  # by bytes, not count

    # Files overlap: the next is decoded while one's network runs, one is encoded while the next is classified.
    results = classify_files([(p, classify_output(args, p, to_folder)) for p in mine], model, config,
                             overwrite=args.overwrite, device=device, progress=not args.quiet and world == 1,
                             tile_size=args.tile_size, threads=args.threads, batch_points=args.batch_points,
                             first=early, keep_classes=args.keep_classes,
                             roof_check=args.roof_check)
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
    return _cli_args.build_parser({"info": cmd_info, "evaluate": cmd_evaluate, "generate": cmd_generate,
                                   "train": cmd_train, "classify": cmd_classify})


class Terminated(BaseException):
    """SIGTERM / SIGHUP (a batch scheduler's kill, a closed terminal): unwinds the command like Ctrl-C does, so
    that temporary folders, partial outputs and codec children are removed on the way out."""


def _terminated(signum, frame):
    raise Terminated(signum)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _terminated)
    try:
        args.func(args)
    except (LasError, ValueError, OSError) as e:
        print(f"sparseconv {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sparseconv {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        signum = e.args[0]
        print(f"sparseconv {args.command}: terminated ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except Exception as e:  # anything else: still one line; SPARSECONV_DEBUG=1 shows the traceback
        if os.environ.get("SPARSECONV_DEBUG"):
            raise
        print(f"sparseconv {args.command}: unexpected error: {type(e).__name__}: {e} "
              "(set SPARSECONV_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
