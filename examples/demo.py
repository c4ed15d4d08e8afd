#!/usr/bin/env python
"""The main job, as `make demo` runs it: classify LiDAR files with the shipped pretrained model.

1. `sparseconv generate`: a few labelled airborne tiles (one of them is classified below, held out from the
   pretrained model's training data by its seed);
2. `sparseconv classify`: the real LAS/LAZ files in ../shared/data/las when present, and the generated tile,
   written as classified LAZ with a top-down PNG coloured by class;
3. `sparseconv evaluate`: scores against each file's own labels (vegetation 3/4/5 merged for the real files,
   whose labelling differs in detail; their "unclassified" and user-defined codes left out).

    python examples/demo.py [--out demo]
"""
import argparse
import glob
import os
import shlex
import sys

from sparseconv.cli import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data", "las")


def run(*args):
    print(f"\n$ sparseconv {' '.join(shlex.quote(str(a)) for a in args)}", flush=True)
    code = cli([str(a) for a in args])
    if code:
        sys.exit(code)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=os.path.join(ROOT, "demo"))
    args = ap.parse_args()
    out = args.out
    tiles = os.path.join(out, "tiles")
    classified = os.path.join(out, "classified")
    os.makedirs(classified, exist_ok=True)
    # Seed 2026 is not a seed the pretrained models were trained with (0, then 2): these tiles are new to it.
    run("generate", tiles, "--tiles", "3", "--seed", "2026", "--quiet")
    real = sorted(glob.glob(os.path.join(SHARED, "*.la[sz]")))
    if not real:
        print(f"\n(no real files at {os.path.normpath(SHARED)}: classifying a generated tile only)")
    inputs = real + [os.path.join(tiles, "tile_0000.laz")]
    run("classify", *inputs, "-o", classified, "--overwrite", "--png", "--quiet")
    for src in inputs:
        pred = os.path.join(classified, os.path.basename(src))
        if src in real:
            run("evaluate", pred, "--reference", src, "--remap", "3,4,5:5", "--ignore", "0", "1", "65", "--png",
                os.path.splitext(pred)[0] + "_confusion.png")
        else:
            run("evaluate", pred, "--reference", src, "--png", os.path.splitext(pred)[0] + "_confusion.png")
    print(f"\nclassified files, top-down PNGs and confusion PNGs in {classified}")


if __name__ == "__main__":
    main()
