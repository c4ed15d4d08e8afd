"""Kernel maps cached per site set, shared by every tensor derived from the same input.

A SparseTensor carries `sites` (a token naming its coordinate set) and `kmaps` (the cache dict). Layers that keep
the sites (submanifold convs, activations, norms) pass both on; a strided conv makes new sites, cached under its
geometry so that a second layer with the same geometry on the same input gets the same sites and maps back.
"""
from dataclasses import dataclass

import torch

from . import ops
from .tensor import AXIS_LIMIT


class KernelMap:
    """nbr [K, N_out] and, computed on first use, its transpose [K, N_in] (None for symmetric maps)."""

    def __init__(self, nbr, n_in, symmetric=False, nbr_t=None):
        self.nbr = nbr
        self.n_in = n_in
        self.symmetric = symmetric
        self._nbr_t = nbr_t

    @property
    def nbr_t(self):
        if self.symmetric:
            return None
        if self._nbr_t is None:
            # Eagerly the C++ op directly: the Python custom-op wrapper (SymInt n_in, for torch.compile) costs
            # a 1.7 s torch._dynamo import on its first call, which a one-shot `sparseconv classify` would pay.
            invert = ops.invert_map if torch.compiler.is_compiling() else torch.ops.sparseconv.invert_map
            self._nbr_t = invert(self.nbr, self.n_in)
        return self._nbr_t

    def transposed(self):
        """The map of the transposed convolution: outputs and inputs swap roles."""
        return KernelMap(self.nbr_t, self.nbr.shape[1], nbr_t=self.nbr)


@dataclass
class StridedMap:
    """A strided conv's output sites and map, plus what its inverse needs to restore the input."""

    kmap: KernelMap
    out_coords: torch.Tensor
    out_shape: tuple
    out_sites: int


def new_sites(kmaps):
    """A fresh site-set token for the cache `kmaps`: a plain int counted per cache (the input's sites are 0).
    Plain ints keep every cache key a hashable constant that torch.compile can compare (object() tokens made
    Dynamo give up on the lookup), and the same network hands out the same numbers for every batch, so compiled
    code's guards on them keep holding."""
    n = kmaps["sites"] = kmaps.get("sites", 0) + 1
    return n


def subm_map(x, kernel_size, dilation):
    key = ("subm", x.sites, kernel_size, dilation)
    entry = x.kmaps.get(key)
    if entry is None:
        nbr = ops.build_subm_map(x.coords, list(kernel_size), list(dilation))
        symmetric = all(k % 2 == 1 for k in kernel_size)
        entry = x.kmaps[key] = KernelMap(nbr, x.coords.shape[0], symmetric=symmetric)
    return entry


def strided_map(x, kernel_size, stride, padding, dilation):
    key = ("strided", x.sites, kernel_size, stride, padding, dilation)
    entry = x.kmaps.get(key)
    if entry is None:
        out_coords, nbr = ops.build_strided_map(
            x.coords, list(x.spatial_shape), list(kernel_size), list(stride), list(padding), list(dilation)
        )
        out_shape = tuple(
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, k, st, p, d in zip(x.spatial_shape, kernel_size, stride, padding, dilation)
        )
        entry = x.kmaps[key] = StridedMap(KernelMap(nbr, x.coords.shape[0]), out_coords, out_shape,
                                          new_sites(x.kmaps))
    return entry


def transposed_output_shape(spatial_shape, kernel_size, stride, padding, dilation):
    """F.conv_transpose3d's output grid (output_padding 0)."""
    return tuple((s - 1) * st - 2 * p + d * (k - 1) + 1
                 for s, k, st, p, d in zip(spatial_shape, kernel_size, stride, padding, dilation))


def transposed_map(x, kernel_size, stride, padding, dilation):
    """A transposed conv's output sites (every cell of F.conv_transpose3d's grid that an active input reaches,
    sorted by (batch, x, y, z)) and map. Built with torch ops: input i feeds output i * stride - padding +
    offset * dilation, so the scatter map nbr_t comes straight from the unique output keys, and its inverse (one
    input per offset and output) is the gather map."""
    key = ("transposed", x.sites, kernel_size, stride, padding, dilation)
    entry = x.kmaps.get(key)
    if entry is None:
        out_shape = transposed_output_shape(x.spatial_shape, kernel_size, stride, padding, dilation)
        if min(out_shape) < 1 or max(out_shape) > AXIS_LIMIT:
            raise ValueError(f"spatial_shape: a transposed conv with kernel_size={kernel_size}, stride={stride}, "
                             f"padding={padding}, dilation={dilation} turns {x.spatial_shape} into {out_shape}; "
                             f"expected every axis in [1, {AXIS_LIMIT}]")
        device = x.coords.device
        grids = torch.meshgrid(*(torch.arange(k, device=device) for k in kernel_size), indexing="ij")
        offsets = torch.stack([g.reshape(-1) for g in grids], 1)  # [K, 3], row k = weight's offset k
        c = x.coords.long()
        step, shift, spread = (torch.tensor(v, device=device) for v in (stride, padding, dilation))
        pos = c[None, :, 1:] * step - shift + offsets[:, None, :] * spread  # [K, N, 3]
        shape = torch.tensor(out_shape, device=device)
        inside = ((pos >= 0) & (pos < shape)).all(-1)
        X, Y, Z = out_shape
        keys = ((c[None, :, 0] * X + pos[..., 0]) * Y + pos[..., 1]) * Z + pos[..., 2]
        out_keys, rows = torch.unique(keys[inside], return_inverse=True)
        nbr_t = torch.full(keys.shape, -1, dtype=torch.int32, device=device)
        nbr_t[inside] = rows.to(torch.int32)
        out_coords = torch.stack([out_keys // (X * Y * Z), out_keys // (Y * Z) % X, out_keys // Z % Y,
                                  out_keys % Z], 1).to(torch.int32)
        # Kept as the map of the reverse direction (outputs -> inputs): its transpose is the gather map.
        reverse = KernelMap(nbr_t, out_coords.shape[0])
        entry = x.kmaps[key] = StridedMap(reverse.transposed(), out_coords, out_shape, new_sites(x.kmaps))
    return entry


def restrict_inputs(kmap, keep, n_old):
    """kmap with its input rows restricted to `keep` (int64, ascending) of n_old rows, renumbered 0..len-1:
    entries that read a dropped row become -1."""
    old_to_new = torch.full((n_old,), -1, dtype=torch.int32, device=keep.device)
    old_to_new[keep] = torch.arange(keep.shape[0], dtype=torch.int32, device=keep.device)
    nbr = torch.where(kmap.nbr >= 0, old_to_new[kmap.nbr.clamp_min(0).long()], kmap.nbr)
    return KernelMap(nbr.contiguous(), keep.shape[0], nbr_t=kmap.nbr_t.index_select(1, keep).contiguous())


def subset_chain(kmaps, sites, ancestor):
    """The rows of `ancestor`'s sites that `sites` kept (int64, ascending) and the ancestor's row count, when
    `sites` came from `ancestor` through SparseTopK steps; None otherwise."""
    keep, n_old = None, None
    while sites != ancestor:
        link = kmaps.get(("subset", sites))
        if link is None:
            return None
        sites, rows, n = link
        keep, n_old = (rows if keep is None else rows[keep]), n
    return (keep, n_old) if keep is not None else None
