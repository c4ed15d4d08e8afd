"""The `sparseconv` command's arguments and input files, without torch: sparseconv/_early.py reads them before
torch is imported (the first input of `classify` starts decoding meanwhile); cli.py runs the commands."""
import argparse
import os

from .io import OPEN3D_SUFFIXES, LasError, is_open3d_file


def las_files(items, what, suffixes=(".las", ".laz")):
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


def build_parser(handlers=None, parser_class=argparse.ArgumentParser):
    """The `sparseconv` argument parser; handlers: {command: function} set as each command's `func` default."""
    handlers = handlers or {}
    ap = parser_class(prog="sparseconv", description="Sparse 3D CNNs for point clouds: LAS/LAZ tools.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="points, bounds, point format and class histogram of LAS/LAZ files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=handlers.get("info"))
    p = sub.add_parser("evaluate", help="accuracy, kappa, per-class IoU and confusion of a classified file")
    p.add_argument("predicted", help="classified LAS/LAZ")
    p.add_argument("--reference", help="labelled LAS/LAZ with the same points in the same order "
                                       "(default: the predicted file's own labels)")
    p.add_argument("--remap", help="merge classes before scoring, e.g. '3,4,5:5' (vegetation)")
    p.add_argument("--ignore", type=int, nargs="*", default=[], help="reference codes left out: points labelled so in the reference are not scored "
                                                              "(predictions of any code still count)")
    p.add_argument("--png", help="also write the confusion matrix as a PNG")
    p.set_defaults(func=handlers.get("evaluate"))

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
    p.set_defaults(func=handlers.get("generate"))

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
    p.set_defaults(func=handlers.get("train"))

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
    p.add_argument("--keep-classes", type=class_list, default=(12,), metavar="CODES",
                   help="input codes kept as they are, e.g. 12 (default: 12, overlap points, a flight-line "
                        "designation the model cannot see) or 7,12,18; 'none' relabels every point")
    p.add_argument("--no-roof-check", dest="roof_check", action="store_false",
                   help="keep the network's building labels where the surface is too rough for a roof (by default "
                        "such patches become vegetation)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--png", action="store_true", help="also write a top-down PNG coloured by class")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handlers.get("classify"))
    return ap


def class_list(text):
    """'12' / '7,12,18' / 'none' -> a tuple of class codes (range checks: classify_files)."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class codes such as 12 or 7,12,18, or none; got {text!r}") \
            from None


def classify_inputs(args):
    """`sparseconv classify`'s files (folders expanded) and whether its output is a folder; LasError for a missing
    or unsupported input."""
    paths = las_files(args.inputs, "IN", (".las", ".laz") + OPEN3D_SUFFIXES)
    to_folder = len(paths) > 1 or os.path.isdir(args.inputs[0]) or os.path.isdir(args.output) \
        or not args.output.lower().endswith((".las", ".laz"))
    return paths, to_folder


def classify_output(args, path, to_folder):
    """Where `sparseconv classify` writes input `path`: PLY/PCD/XYZ/PTS into a LAZ of the same name."""
    name = os.path.basename(path)
    if is_open3d_file(path):
        name = os.path.splitext(name)[0] + ".laz"
    return os.path.join(args.output, name) if to_folder else args.output
