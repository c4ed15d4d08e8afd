"""Training the LiDAR classifier on labelled LAS/LAZ files.

Files are read once and cut into pieces of two windows' side; a training sample is a random window of a piece
(tile + overlap on each side), augmented (rotation about z, flips, scaling, jitter, and random thinning so that
one model serves 0.1-30 points/m2), with its ground estimate computed after the augmentation, as classify
computes it on its tiles. Validation runs whole pieces of the held-out files (or tiles when there are few
files) without augmentation. Every epoch writes a resumable checkpoint (atomically) and a PNG of the curves.

Under torchrun (a torch.distributed process group initialised, e.g. by sparseconv.distributed.init) the same
function trains data-parallel: every rank reads the files and draws the same global sample order and
augmentations from the shared seed, but builds and runs only its share of each global batch (batch_size
windows per rank); batch norms are synchronised, the loss is normalised by the global (weighted) point count so
the averaged gradient equals one process's on the whole global batch, validation pieces are split across
ranks, metrics are summed over ranks, and rank 0 alone writes the checkpoint and curves.
"""
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed as sd
from ..metrics import confusion_matrix, scores
from .features import feature_names, height_above_ground
from .model import FORMAT, build_model, load_checkpoint, released_state, save_checkpoint
from .source import read_points
from .windows import grid_shape, make_batch, split_by_id, window_members

DEFAULTS = dict(voxel_size=1.0, tile_size=64.0, overlap=8.0, channels=(16, 32, 64, 96, 128), hidden=32)


class Piece:
    """Points of one piece of a file (dict of arrays), their class indices (-1: not learned) and the file's
    normalisation (intensity ranks, colour depth)."""

    def __init__(self, pts, target, lut, rgb_div, file_index):
        self.pts, self.target, self.lut, self.rgb_div, self.file_index = pts, target, lut, rgb_div, file_index
        self.lo = np.array([pts["x"].min(), pts["y"].min()])
        self.hi = np.array([pts["x"].max(), pts["y"].max()])

    def __len__(self):
        return self.target.size


def class_lut(codes):
    lut = np.full(256, -1, np.int64)
    lut[np.asarray(codes, np.int64)] = np.arange(len(codes))
    return lut


def prepare(paths, codes, side, progress=True):
    """Reads the files and cuts them into pieces of side x side metres. codes: the learned ASPRS classes, in
    the order of the model's outputs (None: every class present)."""
    loaded = []
    it = _progress(paths, "read", progress)
    for path in it:
        pts, stats = read_points(path, labels=True)
        loaded.append((pts, stats))
    if codes is None:
        present = np.zeros(256, bool)
        for pts, _ in loaded:
            present[np.unique(pts["classification"])] = True
        codes = np.flatnonzero(present).tolist()
    lut_cls = class_lut(codes)
    rgb = all(stats.rgb for _, stats in loaded)
    pieces = []
    for i, (pts, stats) in enumerate(loaded):
        if not rgb:
            pts = {k: v for k, v in pts.items() if k not in ("red", "green", "blue")}
        nx, ny = grid_shape(pts["x"].min(), pts["y"].min(), pts["x"].max(), pts["y"].max(), side)
        rows, ids = window_members(pts["x"], pts["y"], pts["x"].min(), pts["y"].min(), side, 0.0, nx, ny)
        for _, r in split_by_id(rows, ids):
            if r.size < 50:
                continue
            sub = {k: v[r] for k, v in pts.items()}
            pieces.append(Piece(sub, lut_cls[sub.pop("classification")], stats.lut, stats.rgb_div, i))
    return pieces, list(codes), rgb


def _progress(it, desc, enabled, total=None):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, total=total, leave=False)


def sample_window(piece, rng, window, augment):
    """(points dict, targets) of a random window of the piece; augmented when asked."""
    pts, target = piece.pts, piece.target
    x, y, z = pts["x"], pts["y"], pts["z"]
    c = (piece.lo + piece.hi) / 2
    if augment:
        theta = rng.uniform(0, 2 * math.pi)
        cos, sin = math.cos(theta), math.sin(theta)
        dx, dy = x - c[0], y - c[1]
        x, y = c[0] + cos * dx - sin * dy, c[1] + sin * dx + cos * dy
        if rng.random() < 0.5:
            x = 2 * c[0] - x
        if rng.random() < 0.5:
            y = 2 * c[1] - y
        half = np.maximum((piece.hi - piece.lo) / 2 - window / 2, 0)
        c = c + rng.uniform(-half, half)
    keep = (np.abs(x - c[0]) <= window / 2) & (np.abs(y - c[1]) <= window / 2)
    if augment:
        # Thin to a density drawn log-uniformly in 0.1..30 points/m2 (never adds points).
        density = len(piece) / max(np.prod(piece.hi - piece.lo), 1.0)
        target_density = math.exp(rng.uniform(math.log(0.1), math.log(30.0)))
        keep &= rng.random(x.size) < min(1.0, target_density / density)
    idx = np.flatnonzero(keep)
    if idx.size < 8:  # too sparse a draw: take the whole piece instead
        idx = np.arange(x.size)
    out = {k: v[idx] for k, v in pts.items()}
    out["x"], out["y"], out["z"] = x[idx], y[idx], z[idx]
    if augment:
        s = rng.uniform(0.9, 1.1)
        j = rng.normal(0, 0.02, (3, idx.size))
        out["x"], out["y"] = c[0] + (out["x"] - c[0]) * s + j[0], c[1] + (out["y"] - c[1]) * s + j[1]
        out["z"] = out["z"] * s + j[2]
    return out, target[idx]


# Sensor dropout: the probability that a training window looks as if its sensor lacked a feature group, so
# that single-return, intensity-free and colour-free files are inside the training distribution.
SENSOR_DROPOUT = dict(single_return=0.35, first_only=0.5, no_intensity=0.15, intensity_gamma=0.25, no_rgb=0.2)
_FLAT_LUT = np.full(65536, 0.5, np.float32)  # what intensity_lut gives a file whose intensity is constant


def sensor_dropout(pts, target, lut, rng, p=SENSOR_DROPOUT):
    """(pts, target, lut) of a window as another sensor would have recorded it:

    * single return (p single_return): every point becomes return 1 of 1; of those windows a share
      (first_only) also keeps only first returns, as a single-return sensor records the first surface hit
      (canopy tops then look like a rough surface, with nothing below);
    * intensity absent (no_intensity): constant, as in a file without intensity (its rank is 0.5 everywhere);
      else (intensity_gamma) the ranks are bent by r ** g, g log-uniform in 1/3..3: other sensors order
      materials differently (ranks alone are already invariant to any gain or bit depth);
    * colour (no_rgb): zeroed (the RGB features of a model trained with colour; a model without them ignores it).
    """
    if rng.random() < p["single_return"]:
        if rng.random() < p["first_only"]:
            keep = np.flatnonzero(pts["return_number"] <= 1)
            if keep.size >= 8:
                pts, target = {k: v[keep] for k, v in pts.items()}, target[keep]
        pts = dict(pts)
        pts["return_number"] = np.ones_like(pts["return_number"])
        pts["number_of_returns"] = np.ones_like(pts["number_of_returns"])
    u = rng.random()
    if u < p["no_intensity"]:
        lut = _FLAT_LUT
    elif u < p["no_intensity"] + p["intensity_gamma"]:
        lut = (lut ** math.exp(rng.uniform(-math.log(3.0), math.log(3.0)))).astype(np.float32)
    if "red" in pts and rng.random() < p["no_rgb"]:
        pts = {**pts, **{c: np.zeros_like(pts[c]) for c in ("red", "green", "blue")}}
    return pts, target, lut


def _window_input(piece, pts, lut=None):
    return (pts, height_above_ground(pts["x"], pts["y"], pts["z"]), piece.lut if lut is None else lut,
            piece.rgb_div)


def class_weights(pieces, k):
    """Inverse square-root frequency (mean 1, at most 10x the mean): rare classes (wires, water) still count."""
    counts = np.zeros(k)
    for p in pieces:
        t = p.target[p.target >= 0]
        counts += np.bincount(t, minlength=k)
    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1) / max(counts.sum(), 1)), 0.0)
    w = w / w[w > 0].mean()
    return torch.tensor(np.minimum(w, 10.0), dtype=torch.float32)


def split(pieces, val_fraction, rng):
    """Validation by whole files when there are at least 5, else by pieces."""
    files = sorted({p.file_index for p in pieces})
    n_val = int(round(val_fraction * (len(files) if len(files) >= 5 else len(pieces))))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if len(files) >= 5:
        val_files = set(rng.permutation(files)[:n_val].tolist())
        return [p for p in pieces if p.file_index not in val_files], [p for p in pieces if p.file_index in val_files]
    order = rng.permutation(len(pieces))
    val = set(order[:n_val].tolist())
    return [p for i, p in enumerate(pieces) if i not in val], [p for i, p in enumerate(pieces) if i in val]


def _metrics(cm, loss_sum, n):
    s = scores(cm)
    iou = np.asarray(s["iou"], np.float64)
    present = cm.sum(1) > 0
    return {"loss": loss_sum / max(n, 1), "accuracy": s["overall_accuracy"],
            "miou": float(np.nanmean(iou[present])) if present.any() else float("nan"), "iou": iou.tolist()}


def _run(model, batches, k, weights, optimizer=None, scheduler=None, progress=None):
    """One pass; metrics summed over ranks. Training loss: the class-weighted mean over the global batch
    (this rank's weighted sum / the all-reduced weight total, times the world size, which DDP's gradient
    averaging divides out again)."""
    cm, loss_sum, n = np.zeros((k, k), np.int64), 0.0, 0
    world = sd.get_world_size()
    for batch, target in batches:
        target = torch.from_numpy(target)
        valid = target >= 0
        with torch.set_grad_enabled(optimizer is not None):
            logits = model(*batch)
            loss_total = F.cross_entropy(logits, target, weight=weights, ignore_index=-1, reduction="sum")
        local_w = float(weights[target[valid]].sum())
        if optimizer is not None:
            global_w = sd.reduce_sum({"w": local_w})["w"] / world if world > 1 else local_w
            loss = loss_total / max(global_w, 1e-12)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
        pred = logits.argmax(1)[valid].numpy()
        t = target[valid].numpy()
        cm += np.bincount(t * k + pred, minlength=k * k).reshape(k, k)
        if local_w > 0:  # reported loss: each batch's weighted mean, weighted by its point count
            loss_sum += float(loss_total.detach()) / local_w * int(valid.sum())
        n += int(valid.sum())
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss_sum / max(n, 1):.3f}")
    totals = sd.reduce_sum({"cm": torch.from_numpy(cm), "loss_sum": loss_sum, "n": n})
    return _metrics(totals["cm"].numpy(), totals["loss_sum"], int(totals["n"]))


def _train_batches(pieces, rng, batch_size, window, names, voxel, samples):
    """Batches of random augmented windows. Every rank draws the whole global batch (batch_size x world
    windows) from the shared generator, so the generators stay in step, and builds only its own share
    (windows rank, rank + world, ...): one process with batch_size x world sees the same windows."""
    rank, world = sd.get_rank(), sd.get_world_size()
    reps = -(-samples // len(pieces))
    order = np.concatenate([rng.permutation(len(pieces)) for _ in range(reps)])[:samples]
    step = batch_size * world
    for s in range(0, len(order), step):
        drawn = [(pieces[i], *sensor_dropout(*sample_window(pieces[i], rng, window, True), pieces[i].lut, rng))
                 for i in order[s:s + step]]
        mine = drawn[rank::world]
        batch = make_batch([_window_input(p, pts, lut) for p, pts, _, lut in mine], names, voxel)
        yield batch, np.concatenate([t for _, _, t, _ in mine])


def _val_batches(pieces, names, voxel):
    """Whole validation pieces, split across ranks."""
    for p in sd.shard(pieces):
        pts = dict(p.pts)
        yield make_batch([_window_input(p, pts)], names, voxel), p.target


def fit_normalisation(model, pieces, names, voxel, rng, n=32):
    """Feature mean/std from (unaugmented windows of) the training split only."""
    feats = [make_batch([_window_input(p, dict(p.pts))], names, voxel)[0] for p in rng.permutation(pieces)[:n]]
    model.norm.fit(torch.cat(feats))


def expand_inputs(new_state, old_state, old_names, new_names):
    """old_state re-laid for the inputs new_names: a feature both know keeps its weights and normalisation,
    a new one gets zero weights (in the U-Net's stem and the head's point half) and new_state's fitted
    normalisation, so the expanded model computes exactly what the old one did until training moves it."""
    missing = [n for n in old_names if n not in new_names]
    if missing:
        raise ValueError(f"--init: the new feature list drops {missing}, which the initial model uses")
    idx = torch.tensor([new_names.index(n) for n in old_names])
    out = dict(old_state)
    for key in ("norm.mean", "norm.std", "unet.norm.mean", "unet.norm.std"):
        t = new_state[key].clone()
        t[idx] = old_state[key].to(t.dtype)
        out[key] = t
    w = old_state["unet.stem.0.weight"]
    stem = torch.zeros(*w.shape[:-2], len(new_names), w.shape[-1], dtype=w.dtype)
    stem[..., idx, :] = w
    out["unet.stem.0.weight"] = stem
    h = old_state["head.0.weight"]
    n_old = len(old_names)
    head = torch.zeros(h.shape[0], len(new_names) + h.shape[1] - n_old, dtype=h.dtype)
    head[:, idx] = h[:, :n_old]
    head[:, len(new_names):] = h[:, n_old:]
    out["head.0.weight"] = head
    return out


def _adapt_head(model, old_codes, new_codes, state):
    """Loads a pretrained state into a model whose output classes differ: shared codes keep their rows."""
    last = "head.2"
    w, b = state.pop(f"{last}.weight"), state.pop(f"{last}.bias")
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        for j, code in enumerate(new_codes):
            if code in old_codes:
                i = old_codes.index(code)
                model.head[2].weight[j] = w[i]
                model.head[2].bias[j] = b[i]


def train(paths, out, epochs=20, batch_size=4, lr=2e-3, val_fraction=0.2, seed=0, classes=None, init=None,
          resume=False, overwrite=False, progress=True, log=print, curves=None, samples_per_epoch=None,
          return_model=False, features=None, **config_overrides):
    """Trains and writes the checkpoint `out` after every epoch (plus `curves`, a PNG, default out + .png).
    An epoch draws samples_per_epoch random windows (default: one per training piece, at least 64, so that
    a few small files still give enough steps); batch_size is per rank. features: input feature names (default:
    every feature, or init's); with init, features init lacks start with zero weights (the model begins as
    init's) and their normalisation is fitted on the training split. Returns the history (one dict per
    epoch with train and val metrics), and the trained model after it when return_model."""
    main = sd.is_main()
    progress = progress and main
    if not main:
        log = _silent
    if os.path.exists(out) and not (resume or overwrite):
        raise ValueError(f"-o: {out} exists; pass --resume to continue it or --overwrite to start again")
    if not paths:
        raise ValueError("DATA: expected at least one labelled LAS/LAZ file")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start_epoch, history, ckpt = 0, [], None
    if resume and os.path.exists(out):
        _, config, ckpt = load_checkpoint(out)
        if "optimizer" not in ckpt:
            raise ValueError(f"--resume: {out} holds no training state (a released model); use --init")
        start_epoch, history = ckpt["epoch"], ckpt["history"]
        rng.bit_generator.state = ckpt["rng"]["numpy"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        classes = config["classes"]
    elif init is not None:
        _, config, pre = load_checkpoint(init)
        config = dict(config)
    else:
        config = {**DEFAULTS, **{k: v for k, v in config_overrides.items() if v is not None}}
        config["channels"] = list(config["channels"])
    window = config["tile_size"] + 2 * config["overlap"]
    pieces, codes, rgb = prepare(paths, classes, 2 * window, progress)
    if not pieces:
        raise ValueError("DATA: no piece of the files holds enough points to train on")
    old_names = list(config.get("features", []))
    if init is None and not (resume and ckpt):
        config["features"] = list(features or feature_names(rgb))
    elif init is not None and features is not None:
        config["features"] = list(features)
    elif any(f in ("red", "green", "blue") for f in config["features"]) and not rgb:
        raise ValueError("DATA: the model uses colour, but not every file has RGB")
    old_codes = config.get("classes")
    config["classes"] = list(codes)
    names, voxel, k = config["features"], config["voxel_size"], len(codes)
    model = build_model(config)
    train_set, val_set = split(pieces, val_fraction, rng)
    if not train_set:
        raise ValueError("DATA: nothing left to train on after the validation split; add files or lower "
                         "--val-fraction")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    elif init is not None:
        state = dict(pre["model"])
        if old_names != list(names):
            fit_normalisation(model, train_set, names, voxel, rng)
            state = expand_inputs(model.state_dict(), state, old_names, list(names))
        if list(old_codes) == list(codes):
            model.load_state_dict(state)
        else:
            _adapt_head(model, list(old_codes), list(codes), state)
    else:
        fit_normalisation(model, train_set, names, voxel, rng)
    weights = class_weights(train_set, k)
    world = sd.get_world_size()
    samples = int(samples_per_epoch or max(len(train_set), 64))
    samples = -(-samples // world) * world  # every rank gets a share of every step
    steps_per_epoch = math.ceil(samples / (batch_size * world))
    steps = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    done_steps = -1
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        done_steps = start_epoch * steps_per_epoch - 1
    if world > 1:
        # Batch statistics over the global batch (every rank starts from the same weights: same seed, and DDP
        # broadcasts rank 0's).
        model = sd.convert_sync_batchnorm(model)
    net = sd.wrap(model)
    # One-cycle schedule over all epochs; a resumed run with a different --epochs re-plans it from where it is.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=max(steps, 1), pct_start=0.1,
                                                    last_epoch=done_steps)
    if ckpt is not None and ckpt.get("epochs") == epochs:
        scheduler.load_state_dict(ckpt["scheduler"])
    log(f"train: {len(train_set)} pieces ({sum(map(len, train_set)):,} points), val: {len(val_set)} pieces; "
        f"classes {codes}; features {names}; {sum(p.numel() for p in model.parameters()):,} parameters")
    if world > 1:
        log(f"data-parallel over {world} processes: {batch_size} windows per rank, {batch_size * world} per step")
    curves = curves or os.path.splitext(out)[0] + "_curves.png"
    if main:
        os.makedirs(os.path.dirname(os.path.abspath(curves)), exist_ok=True)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        model.train()
        bar = _progress(range(steps_per_epoch), f"epoch {epoch + 1}/{epochs}", progress)
        bar = bar if hasattr(bar, "update") else None
        tr = _run(net, _train_batches(train_set, rng, batch_size, window, names, voxel, samples), k, weights,
                  optimizer, scheduler, bar)
        if bar is not None:
            bar.close()
        model.eval()
        va = _run(model, _val_batches(val_set, names, voxel), k, weights) if val_set else None
        history.append({"epoch": epoch + 1, "train": tr, "val": va, "seconds": time.perf_counter() - t0})
        log(f"epoch {epoch + 1}/{epochs}: train loss {tr['loss']:.3f} acc {tr['accuracy']:.3f} "
            f"mIoU {tr['miou']:.3f}" + (f" | val loss {va['loss']:.3f} acc {va['accuracy']:.3f} "
                                        f"mIoU {va['miou']:.3f}" if va else "")
            + f" ({history[-1]['seconds']:.0f} s)")
        sd.check_replicas(model)
        if main:
            save_checkpoint({"format": FORMAT, "config": config, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "epoch": epoch + 1, "epochs": epochs, "history": history,
                             "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}}, out)
            from .curves import plot_curves

            plot_curves(history, codes, curves)
        sd.barrier()
    return (history, model) if return_model else history


def _silent(*args, **kwargs):
    pass


def release(checkpoint, out, half=True):
    """Writes a checkpoint without training state (what ships as a pretrained model); half: weight tensors
    stored as float16 (half the file; loading casts them back to float32), small buffers kept as they are."""
    _, config, ckpt = load_checkpoint(checkpoint)
    state = released_state(ckpt["model"], half)
    save_checkpoint({"format": FORMAT, "config": config, "model": state,
                     "history": ckpt.get("history", [])}, out)
