"""Weight-space interpolation of LiDAR checkpoints (WiSE-FT, Wortsman et al. 2022): a fine-tuned model averaged
with the model it was fine-tuned from keeps most of the gain on the new data and loses less of what the old one
got right on data unlike both. Only checkpoints of one fine-tuning lineage (same config, one loss basin) average
into a working model; the result is written like `release` writes one (float16 weights, no training state)."""
from .model import FORMAT, load_checkpoint, released_state, save_checkpoint
from .train import expand_inputs


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
    # the widest input list; a model fine-tuned with features added (zero weights at first) averages with the one
    # it started from once that one is re-laid for them (train.expand_inputs: it computes exactly what it did)
    widest = max(range(len(ckpts)), key=lambda i: len(ckpts[i]["config"]["features"]))
    config = ckpts[widest]["config"]
    names = list(config["features"])
    states = []
    for p, c in zip(paths, ckpts):
        own = list(c["config"]["features"])
        if {**c["config"], "features": names} != config or not set(own) <= set(names):
            raise ValueError(f"paths: {p} has config {c['config']}, expected {config} (that of {paths[widest]}; "
                             f"only features it lacks may differ)")
        state = {k: v.float() if v.is_floating_point() else v for k, v in c["model"].items()}
        states.append(state if own == names else expand_inputs(ckpts[widest]["model"], state, own, names))
    total = sum(weights)
    state = {k: (sum(w * s[k].double() for w, s in zip(weights, states)) / total).float()
             if v.is_floating_point() else v for k, v in states[-1].items()}
    # why this model is what it is: the ingredients and their weights, then the last one's training history
    recipe = [{"checkpoint": str(p), "weight": w / total} for p, w in zip(paths, weights)]
    ckpt = {"format": FORMAT, "config": config, "model": released_state(state, half), "averaged_from": recipe,
            "history": ckpts[-1].get("history", [])}
    save_checkpoint(ckpt, out)
    return ckpt
