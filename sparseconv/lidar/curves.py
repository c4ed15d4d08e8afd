"""PNG pictures of training curves and classified tiles (written atomically)."""
import numpy as np

from ..io.atomic import atomic_output

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
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def plot_confusion(cm, classes, path):
    """Row-normalised confusion matrix (reference rows, predicted columns) with the shares printed."""
    plt = _plt()
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
    _save(fig, path)


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


def _rgb(code_hex):
    return np.array([int(code_hex[k:k + 2], 16) for k in (1, 3, 5)], np.uint8)


def topdown_raster(x, y, classes, z=None, max_pixels=900, fill=3):
    """Class image seen from above: each pixel takes its highest point's class (the last one when z is None);
    empty pixels next to filled ones are filled (up to `fill` passes) so sparse clouds read as surfaces.
    Returns (image [H, W] int16, -1 where empty; extent (x0, x1, y0, y1))."""
    x0, y0 = float(x.min()), float(y.min())
    cell = max(max(np.ptp(x), np.ptp(y)) / max_pixels, 0.1)
    w = int(np.ptp(x) // cell) + 1
    h = int(np.ptp(y) // cell) + 1
    pix = ((y - y0) // cell).astype(np.int64) * w + ((x - x0) // cell).astype(np.int64)
    order = np.lexsort((z, pix)) if z is not None else np.argsort(pix, kind="stable")
    last = np.r_[pix[order][1:] != pix[order][:-1], True]  # highest (or last) point of each pixel
    img = np.full(h * w, -1, np.int16)
    img[pix[order][last]] = classes[order][last]
    img = img.reshape(h, w)
    for _ in range(fill):
        empty = img < 0
        if not empty.any():
            break
        pad = np.pad(img, 1, constant_values=-1)
        grown = img.copy()
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            src = pad[1 + dy:1 + dy + img.shape[0], 1 + dx:1 + dx + img.shape[1]]
            take = empty & (grown < 0) & (src >= 0)
            grown[take] = src[take]
        img = grown
    return img, (x0, x0 + w * cell, y0, y0 + h * cell)


def plot_topdown(x, y, classes, path, title="", z=None):
    """Top-down PNG of points coloured by ASPRS class (rasterised: every point counts, whatever the size)."""
    plt = _plt()
    from matplotlib.patches import Patch

    img, extent = topdown_raster(x, y, classes, z)
    lut = np.full((257, 3), 255, np.uint8)  # index 256 = empty pixel (img -1)
    for c in range(256):
        lut[c] = _rgb(COLOURS.get(c, "#607d8b"))
    rgb = lut[np.where(img < 0, 256, img)]
    span = extent[1] - extent[0], extent[3] - extent[2]
    w = 8.0
    fig, ax = plt.subplots(figsize=(w + 2.2, min(14.0, max(3.0, w * span[1] / span[0]))))
    ax.imshow(rgb, origin="lower", extent=extent, interpolation="nearest")
    handles = [Patch(color=COLOURS.get(int(c), "#607d8b"), label=f"{c} {NAMES.get(int(c), '')}")
               for c in np.unique(classes)]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set(title=title, xlabel="x (m)", ylabel="y (m)")
    fig.tight_layout()
    _save(fig, path)
