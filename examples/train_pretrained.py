#!/usr/bin/env python
"""Trains a pretrained LiDAR model for sparseconv/models/pretrained/ (reproducible with its seed).

1. generates --tiles airborne tiles (100 m, 1-30 pulses/m2 log-uniform, every scene kind, a --single-return
   share of them from a single-return sensor; sparseconv.data.airborne),
2. trains the PointSegNet (sparseconv.lidar.train: every feature, shape features included, and sensor dropout)
   with a validation split of whole tiles, from scratch or from --init (features the initial model lacks start
   with zero weights); the training checkpoint is resumable (run the script again and it continues),
3. writes the released model (weights in float16, no optimizer state) and its curves PNG.

    python examples/train_pretrained.py --tiles 12 --epochs 2 --work /tmp/pt --out /tmp/pt/model.pt   # smoke
    python examples/train_pretrained.py --init old.pt --features base --seed 2 --tiles 640 --epochs 30 --lr 1e-3
    python examples/train_pretrained.py --init run1.pt --features base --seed 4 --tile-seed 2 --tiles 640 \
        --epochs 22 --lr 1e-3 --work build/run2
    python examples/train_pretrained.py --init run2.pt --features base --seed 5 --tile-seed 7 --tiles 640 \
        --epochs 14 --lr 1e-3 --work build/run3          # the shipped model's three runs (README), each on the
                                                          # generator of its commit, then
    python examples/average_checkpoints.py original.pt@0.15 run3.pt@0.85 -o <shipped model>

Scores on real files: examples/evaluate_pretrained.py.
"""
import argparse
import os
import sys

import numpy as np

from sparseconv.data.airborne import generate_tile, write_tile_las
from sparseconv.lidar import PRETRAINED, release, train
from sparseconv.lidar.features import feature_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tiles(folder, n, seed, single_return=0.3, density=(1.0, 30.0), indices=None):
    """Tile i: its own seed, a density drawn log-uniformly in `density` pulses/m2 and, with probability
    single_return, a single-return sensor, all from (seed, i). Thinning in training reaches lower densities.
    indices: generate only these (several processes can share the work; existing tiles are kept)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in (range(n) if indices is None else indices):
        ss = np.random.SeedSequence([seed, i])
        rng = np.random.default_rng(ss)
        path = os.path.join(folder, f"tile_{i:04d}.laz")
        if not os.path.exists(path):
            d = float(np.exp(rng.uniform(np.log(density[0]), np.log(density[1]))))
            single = bool(rng.random() < single_return)
            tile = generate_tile(int(ss.generate_state(1, np.uint32)[0]), size_m=100.0, density=d,
                                 single_return=single)
            write_tile_las(tile, path)
            print(f"\rgenerated {i + 1}/{n} tiles", end="", file=sys.stderr, flush=True)
        paths.append(path)
    print(file=sys.stderr)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--tiles", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="training seed (windows, split, initial weights)")
    ap.add_argument("--tile-seed", type=int, help="seed of the generated tiles (default: --seed)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--init", help="start from this model (e.g. a copy of the previous shipped one)")
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "pretrained"),
                    help="generated tiles and the resumable training checkpoint")
    ap.add_argument("--out", default=PRETRAINED)
    ap.add_argument("--features", choices=("all", "base"), default="all",
                    help="all: every feature, shape features included; base: the shipped model's six (hag, "
                         "intensity, first, last, returns, dz), which held up better on the real IGN file")
    ap.add_argument("--single-return", type=float, default=0.3, help="share of single-return tiles")
    args = ap.parse_args()
    tile_seed = args.seed if args.tile_seed is None else args.tile_seed
    paths = make_tiles(os.path.join(args.work, "tiles"), args.tiles, tile_seed, args.single_return)
    ckpt = os.path.join(args.work, "train.pt")
    resume = os.path.exists(ckpt)
    train(paths, ckpt, epochs=args.epochs, batch_size=4, lr=args.lr, val_fraction=0.15, seed=args.seed,
          resume=resume, init=None if resume else args.init,
          features=feature_names(False, shape=args.features == "all"),
          curves=os.path.splitext(args.out)[0] + "_curves.png")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    release(ckpt, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
