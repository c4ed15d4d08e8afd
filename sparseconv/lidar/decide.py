"""From summed window scores to ASPRS codes, with uncertain points left unclassified (1).

A wrong "water" is worse than no answer: dark flat fields (stubble, wet soil) and single-return sensors look
like water to a model that leans on intensity and few returns. So water is written only where the model is
confident; elsewhere the point stays 1 (unclassified), which any downstream tool treats as "not decided".

Given the points' coordinates, building patches too rough for a roof (roofs.py) get the vegetation class the
model scores highest for each of their points.
"""
import numpy as np
import torch

from .roofs import rough_patches

UNCLASSIFIED = 1
WATER = 9
BUILDING = 6
VEGETATION = (3, 4, 5)
WATER_MIN_PROB = 0.8  # mean softmax probability over the windows covering the point


def decide(score, codes, water_min_prob=WATER_MIN_PROB, xyz=None):
    """score [P, K] tensor (softmax probabilities summed over windows), codes [K] ASPRS codes -> [P] codes.
    xyz: the points' (x, y, z) arrays, for the roof check; None skips it."""
    codes = np.asarray(codes, np.int64)
    best = score.argmax(1)  # on the sums themselves: the labels of every other class as before the rule
    conf = score.gather(1, best[:, None])[:, 0] / score.sum(1).clamp_min(1e-12)
    out = codes[best.numpy()]
    if WATER in codes and UNCLASSIFIED in codes:
        out[(out == WATER) & (conf < water_min_prob).numpy()] = UNCLASSIFIED
    veg = np.flatnonzero(np.isin(codes, VEGETATION))
    if xyz is not None and BUILDING in codes and veg.size:
        b = np.flatnonzero(out == BUILDING)
        b = b[rough_patches(*(a[b] for a in xyz))]
        out[b] = codes[veg[score[torch.from_numpy(b)][:, torch.from_numpy(veg)].argmax(1).numpy()]]
    return out
