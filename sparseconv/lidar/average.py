"""Weight-space interpolation of LiDAR checkpoints (WiSE-FT, Wortsman et al. 2022): a fine-tuned model averaged
with the model it was fine-tuned from keeps most of the gain on the new data and loses less of what the old one
got right on data unlike both. Only checkpoints of one fine-tuning lineage (same config, one loss basin) average
into a working model; the result is written like `release` writes one (float16 weights, no training state)."""
import torch

from .model import FORMAT, load_checkpoint, released_state, save_checkpoint


def average_checkpoints(paths, weights, out, half=True):
    """Writes sum_i w_i * state_i / sum_i w_i to `out` (floating tensors; integer buffers such as BatchNorm's
    batch counters come from the last checkpoint). Returns the averaged checkpoint dict."""
    paths, weights = list(paths), [float(w) for w in weights]
    if len(paths) < 2:
        raise ValueError(f"paths: expected at least 2 checkpoints to average, got {len(paths)}")
    if len(weights) != len(paths):
        raise ValueError(f"weights: expected one per checkpoint ({len(paths)}), got {len(weights)}")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights: expected non-negative numbers with a positive sum, got {weights}")
    ckpts = [load_checkpoint(p)[2] for p in paths]
    config = ckpts[0]["config"]
    for p, c in zip(paths[1:], ckpts[1:]):
        if c["config"] != config:
            raise ValueError(f"paths: {p} has config {c['config']}, expected {config} (that of {paths[0]})")
    total = sum(weights)
    state = {k: (sum(w * c["model"][k].double() for w, c in zip(weights, ckpts)) / total).float()
             if v.is_floating_point() else v for k, v in ckpts[-1]["model"].items()}
    # why this model is what it is: the ingredients and their weights, then the last one's training history
    recipe = [{"checkpoint": str(p), "weight": w / total} for p, w in zip(paths, weights)]
    ckpt = {"format": FORMAT, "config": config, "model": released_state(state, half), "averaged_from": recipe,
            "history": ckpts[-1].get("history", [])}
    save_checkpoint(ckpt, out)
    return ckpt
