#!/usr/bin/env python
"""Trains the pretrained LiDAR model shipped in sparseconv/models/pretrained/ (reproducible with its seed).

1. generates --tiles airborne tiles (100 m, 2-20 pulses/m2, every scene kind; sparseconv.data.airborne),
2. trains the PointSegNet (sparseconv.lidar.train) with a validation split of whole tiles; the training
   checkpoint is resumable (run the script again after an interruption and it continues),
3. writes the released model (weights in float16, no optimizer state) and its curves PNG.

    python examples/train_pretrained.py                  # ~30 min on 2 idle cores
    python examples/train_pretrained.py --tiles 12 --epochs 2 --work /tmp/pt --out /tmp/pt/model.pt   # smoke

Scores on real files: examples/evaluate_pretrained.py.
"""
import argparse
import os
import sys

import numpy as np

from sparseconv.data.airborne import generate_tile, write_tile_las
from sparseconv.lidar import PRETRAINED, release, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tiles(folder, n, seed):
    """Tile i: its own seed and a density drawn log-uniformly in 2..20 pulses/m2 from (seed, i)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        ss = np.random.SeedSequence([seed, i])
        rng = np.random.default_rng(ss)
        path = os.path.join(folder, f"tile_{i:04d}.laz")
        if not os.path.exists(path):
            density = float(np.exp(rng.uniform(np.log(2.0), np.log(20.0))))
            tile = generate_tile(int(ss.generate_state(1, np.uint32)[0]), size_m=100.0, density=density)
            write_tile_las(tile, path)
            print(f"\rgenerated {i + 1}/{n} tiles", end="", file=sys.stderr, flush=True)
        paths.append(path)
    print(file=sys.stderr)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--tiles", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "pretrained"),
                    help="generated tiles and the resumable training checkpoint")
    ap.add_argument("--out", default=PRETRAINED)
    args = ap.parse_args()
    paths = make_tiles(os.path.join(args.work, "tiles"), args.tiles, args.seed)
    ckpt = os.path.join(args.work, "train.pt")
    train(paths, ckpt, epochs=args.epochs, batch_size=4, lr=2e-3, val_fraction=0.15, seed=args.seed,
          resume=os.path.exists(ckpt), curves=os.path.splitext(args.out)[0] + "_curves.png")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    release(ckpt, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
