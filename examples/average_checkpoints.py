#!/usr/bin/env python
"""Averages LiDAR checkpoints of one fine-tuning lineage in weight space (WiSE-FT) into a released model.

    python examples/average_checkpoints.py original.pt@0.15 run3.pt@0.85 -o sparseconv/models/pretrained/lidar_unet.pt

How the shipped model was made (README, Pretrained model): the model shipped before issue 16's fine-tuning
(`git show 5204baa^:sparseconv/models/pretrained/lidar_unet.pt`) at 0.15 and run 3 of that fine-tuning at 0.85.
Scores: examples/evaluate_generated.py (generated, held out) and examples/evaluate_pretrained.py (real files).
"""
import argparse

from sparseconv.lidar import average_checkpoints


def ingredient(text):
    path, _, w = text.rpartition("@")
    if not path:
        return text, 1.0
    try:
        return path, float(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PATH or PATH@WEIGHT, got {text!r}") from None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("checkpoints", nargs="+", type=ingredient, help="PATH[@WEIGHT] (weight 1 when left out)")
    ap.add_argument("-o", "--out", required=True, help="the averaged model (written atomically)")
    args = ap.parse_args()
    try:
        ckpt = average_checkpoints([p for p, _ in args.checkpoints], [w for _, w in args.checkpoints], args.out)
    except ValueError as e:
        ap.error(str(e))
    for r in ckpt["averaged_from"]:
        print(f"{r['weight']:.3f}  {r['checkpoint']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
