"""The attention step of Hackel et al. (2018): keep, per batch element, only the k strongest active sites.

Regular sparse convolutions dilate the active set layer by layer; a SparseTopK after each of them bounds the
number of active sites (and so memory and time) whatever the depth. Gradients reach the kept sites only.
"""
import math

import torch
from torch import nn

from ..kmap import new_sites
from ..tensor import SparseTensor

_SCORES = ("l2", "l1", "max")


class SparseTopK(nn.Module):
    """Keeps at most k sites per batch element, those with the largest score (L2 or L1 norm of the feature row,
    or its largest channel). k = max_active, or floor(max_density * X * Y * Z) of the input grid, or the smaller
    of the two. The bound holds with ties (broken by row order, so the result is deterministic); NaN scores
    rank last. Kept sites stay in their input order."""

    def __init__(self, max_active=None, max_density=None, score="l2"):
        super().__init__()
        if max_active is None and max_density is None:
            raise ValueError("max_active: give max_active, max_density or both")
        if max_active is not None and (isinstance(max_active, bool) or not isinstance(max_active, int)
                                       or max_active < 0):
            raise ValueError(f"max_active: expected a non-negative int, got {max_active!r}")
        if max_density is not None and not (isinstance(max_density, (int, float)) and 0 <= max_density <= 1):
            raise ValueError(f"max_density: expected a number in [0, 1], got {max_density!r}")
        if score not in _SCORES:
            raise ValueError(f"score: expected one of {_SCORES}, got {score!r}")
        self.max_active, self.max_density, self.score = max_active, max_density, score

    def extra_repr(self):
        return f"max_active={self.max_active}, max_density={self.max_density}, score={self.score!r}"

    def bound(self, x):
        k = math.inf if self.max_active is None else self.max_active
        if self.max_density is not None:
            k = min(k, math.floor(self.max_density * math.prod(x.spatial_shape)))
        return int(k)

    def forward(self, x):
        if not isinstance(x, SparseTensor):
            raise TypeError(f"input: expected a SparseTensor, got {type(x).__name__}")
        k = self.bound(x)
        batch = x.coords[:, 0].long()
        counts = torch.bincount(batch, minlength=x.batch_size)
        if x.coords.shape[0] == 0 or int(counts.max()) <= k:
            return x
        keep = _top_rows(_score(x.feats.detach(), self.score), batch, counts, k)
        return restrict(x, keep)


def _score(feats, kind):
    if kind == "l2":
        s = feats.norm(dim=1)
    elif kind == "l1":
        s = feats.abs().sum(1)
    else:
        s = feats.amax(1)
    return torch.nan_to_num(s, nan=-math.inf)


def _top_rows(score, batch, counts, k):
    """Rows with rank < k within their batch element by descending score (stable), in ascending row order."""
    order = torch.sort(score, descending=True, stable=True).indices
    order = order[torch.sort(batch[order], stable=True).indices]  # grouped by batch, score-descending inside
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.shape[0], device=order.device) - starts[batch[order]]
    return torch.sort(order[rank < k]).values


def restrict(x, keep):
    """x on the rows `keep` (ascending int64): new sites, registered in the cache as a subset of x's sites so
    maps built for x can be restricted consistently (see kmap.restrict_inputs)."""
    sites = new_sites(x.kmaps)
    x.kmaps[("subset", sites)] = (x.sites, keep, x.coords.shape[0])
    return SparseTensor._derived(x.feats.index_select(0, keep), x.coords.index_select(0, keep), x.spatial_shape,
                                 x.batch_size, x.stride, x.kmaps, sites)
