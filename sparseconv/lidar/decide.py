"""From summed window scores to ASPRS codes, with uncertain points left unclassified (1).

A wrong "water" is worse than no answer: dark flat fields (stubble, wet soil) and single-return sensors look
like water to a model that leans on intensity and few returns. So water is written only where the model is
confident; elsewhere the point stays 1 (unclassified), which any downstream tool treats as "not decided".
"""
import numpy as np
import torch

UNCLASSIFIED = 1
WATER = 9
WATER_MIN_PROB = 0.8  # mean softmax probability over the windows covering the point


def decide(score, codes, water_min_prob=WATER_MIN_PROB):
    """score [P, K] tensor (softmax probabilities summed over windows), codes [K] ASPRS codes -> [P] codes."""
    codes = np.asarray(codes, np.int64)
    best = score.argmax(1)  # on the sums themselves: the labels of every other class as before the rule
    conf = score.gather(1, best[:, None])[:, 0] / score.sum(1).clamp_min(1e-12)
    out = codes[best.numpy()]
    if WATER in codes and UNCLASSIFIED in codes:
        out[(out == WATER) & (conf < water_min_prob).numpy()] = UNCLASSIFIED
    return out
