"""Train VoxelClassifier on generated scanned shapes (sparseconv.data.shapes) on the CPU.

Shows a progress bar, prints the test confusion matrix, and saves loss and accuracy curves of the training and
validation splits on one plot (PNG) plus the model (with its input-normalisation statistics, computed on the
training split only).

    python examples/train_shapes.py --epochs 8 --out runs/shapes
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import sparseconv
from sparseconv.data.shapes import CLASS_NAMES, make_split, voxelize_cloud
from sparseconv.io.atomic import atomic_output
from sparseconv.models import VoxelClassifier


def to_tensors(clouds, resolution):
    """Voxelize every cloud once: list of (coords int32 [V, 3], feats float32 [V, C])."""
    return [tuple(torch.from_numpy(a) for a in voxelize_cloud(c, resolution)) for c in clouds]


def batch(items, labels, index, resolution):
    coords, feats = [], []
    for b, i in enumerate(index):
        c, f = items[i]
        coords.append(torch.cat([torch.full((c.shape[0], 1), b, dtype=torch.int32), c], 1))
        feats.append(f)
    x = sparseconv.SparseTensor(torch.cat(feats), torch.cat(coords), (resolution,) * 3, len(index))
    return x, labels[index]


@torch.no_grad()
def evaluate(model, items, labels, resolution, batch_size):
    model.eval()
    loss, preds = 0.0, []
    for s in range(0, len(items), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(items)))
        x, y = batch(items, labels, idx, resolution)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    return loss / len(items), (pred == labels).float().mean().item(), pred


def save_curves(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["train_loss"]) + 1)
    a.plot(epochs, history["train_loss"], "o-", label="train")
    a.plot(epochs, history["val_loss"], "o-", label="validation")
    a.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    b.plot(epochs, history["train_acc"], "o-", label="train")
    b.plot(epochs, history["val_acc"], "o-", label="validation")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:  # no half-written outputs
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-per-class", type=int, default=120)
    ap.add_argument("--val-per-class", type=int, default=30)
    ap.add_argument("--test-per-class", type=int, default=30)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/shapes", help="folder for curves.png and model.pt")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    t0 = time.perf_counter()
    splits = {}
    for name, n, seed in (("train", args.train_per_class, args.seed), ("val", args.val_per_class, args.seed + 1),
                          ("test", args.test_per_class, args.seed + 2)):
        clouds, labels = make_split(n, seed=1000 * seed + len(name))
        splits[name] = (to_tensors(clouds, args.resolution), torch.from_numpy(labels))
    print(f"data: {', '.join(f'{k} {len(v[0])}' for k, v in splits.items())} clouds of {len(CLASS_NAMES)} classes "
          f"({time.perf_counter() - t0:.1f} s)")

    train_items, train_y = splits["train"]
    in_channels = train_items[0][1].shape[1]
    model = VoxelClassifier(in_channels, len(CLASS_NAMES), args.resolution)
    model.norm.fit(torch.cat([f for _, f in train_items]))  # statistics of the training split only
    opt = torch.optim.AdamW(model.parameters(), args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    history = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_items))
        bar = tqdm(range(0, len(order), args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for s in bar:
            x, y = batch(train_items, train_y, order[s:s + args.batch_size], args.resolution)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        sched.step()
        for split in ("train", "val"):
            loss, acc, _ = evaluate(model, *splits[split], args.resolution, args.batch_size)
            history[f"{split}_loss"].append(loss)
            history[f"{split}_acc"].append(acc)
        print(f"epoch {epoch + 1}: train loss {history['train_loss'][-1]:.3f} acc {history['train_acc'][-1]:.3f}"
              f" | val loss {history['val_loss'][-1]:.3f} acc {history['val_acc'][-1]:.3f}")

    _, acc, pred = evaluate(model, *splits["test"], args.resolution, args.batch_size)
    test_y = splits["test"][1]
    k = len(CLASS_NAMES)
    confusion = torch.bincount(test_y * k + pred, minlength=k * k).reshape(k, k)
    width = max(len(n) for n in CLASS_NAMES)
    print(f"test accuracy {acc:.3f}; confusion matrix (rows: true, columns: predicted)")
    print(" " * (width + 1) + " ".join(f"{n[:6]:>6}" for n in CLASS_NAMES))
    for name, row in zip(CLASS_NAMES, confusion.tolist()):
        print(f"{name:>{width}} " + " ".join(f"{v:6d}" for v in row))
    save_curves(history, os.path.join(args.out, "curves.png"))
    with atomic_output(os.path.join(args.out, "model.pt")) as tmp:
        torch.save(model.state_dict(), tmp)
    print(f"saved {args.out}/curves.png and {args.out}/model.pt")
    return np.float64(acc)


if __name__ == "__main__":
    main()
