"""PNG pictures of training curves and classified tiles (written atomically)."""
import os
import tempfile

import numpy as np

# ASPRS class colours for top-down views (unknown codes grey).
COLOURS = {1: "#9e9e9e", 2: "#a0522d", 3: "#b5e61d", 4: "#4caf50", 5: "#1b5e20", 6: "#e53935", 7: "#ff00ff",
           9: "#1e88e5", 14: "#ffeb3b", 17: "#ff9800", 18: "#ff00ff"}
NAMES = {1: "unclassified", 2: "ground", 3: "low veg.", 4: "medium veg.", 5: "high veg.", 6: "building",
         7: "noise", 9: "water", 14: "wire", 17: "bridge", 18: "high noise"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    plt = _plt()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sparseconv-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def plot_curves(history, codes, path):
    """Loss, overall accuracy, mean IoU (train and validation) and per-class validation IoU per epoch."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, key in zip(axes[:3], ("loss", "accuracy", "miou")):
        ax.plot(ep, [h["train"][key] for h in history], "o-", label="train")
        if history and history[0]["val"]:
            ax.plot(ep, [h["val"][key] for h in history], "s-", label="validation")
        ax.set(xlabel="epoch", title={"miou": "mean IoU"}.get(key, key))
        ax.grid(alpha=0.3)
        ax.legend()
    split = "val" if history and history[0]["val"] else "train"
    iou = np.array([h[split]["iou"] for h in history], np.float64)
    for j, code in enumerate(codes):
        axes[3].plot(ep, iou[:, j], "-", color=COLOURS.get(code, "k"), label=f"{code} {NAMES.get(code, '')}")
    axes[3].set(xlabel="epoch", title=f"per-class IoU ({'validation' if split == 'val' else 'train'})",
                ylim=(0, 1))
    axes[3].legend(fontsize=7, ncol=2)
    axes[3].grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_topdown(x, y, classes, path, title="", max_points=400_000, seed=0):
    """Top-down scatter of points coloured by ASPRS class (a random subset when there are many)."""
    plt = _plt()
    if x.size > max_points:
        idx = np.random.default_rng(seed).choice(x.size, max_points, replace=False)
        x, y, classes = x[idx], y[idx], classes[idx]
    span = max(np.ptp(x), 1e-9), max(np.ptp(y), 1e-9)
    w = 8.0
    fig, ax = plt.subplots(figsize=(w + 2.2, max(3.0, w * span[1] / span[0])))
    present = np.unique(classes)
    palette = np.array([COLOURS.get(int(c), "#607d8b") for c in range(256)])
    ax.scatter(x, y, c=palette[classes], s=max(0.2, min(4.0, 2e4 / x.size)), linewidths=0)
    for c in present:
        ax.scatter([], [], c=COLOURS.get(int(c), "#607d8b"), label=f"{c} {NAMES.get(int(c), '')}")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2)
    ax.set_aspect("equal")
    ax.set(title=title, xlabel="x (m)", ylabel="y (m)")
    fig.tight_layout()
    _save(fig, path)
