"""One sparse 3x3x3 layer C -> C per library and kind, behind one interface, for compare_peers.py's children.

Kinds: "subm" (SubMConv3d), "strided" (SparseConv3d, stride 2, padding 1), "inverse" (SparseInverseConv3d undoing
that strided conv: its input is the strided conv's output sites). Every runner is built from the scene's coords
and our weight [k0, k1, k2, Cin, Cout] (converted to the library's layout), builds and caches its kernel map, and
offers: build_map() (the map build alone, timed), with_cache(feats) (a tensor on the cached map), forward(x) ->
output features, weight_grad() in our layout, bias_grad(), zero_grad(), pairs().

Row order: a library may order the sites it creates (the strided output) its own way. in_order / out_order sort
the runner's input / output rows by site (batch, x, y, z), so the same generated inputs reach the same sites in
every library and outputs are compared site by site; site_digest() checks that the site sets agree.
"""
from __future__ import annotations

import torch

KINDS = ("subm", "strided", "inverse")
KSIZE, STRIDE, PAD = [3, 3, 3], [2, 2, 2], [1, 1, 1]  # the strided geometry (a U-Net's downsampling)


def site_order(coords: torch.Tensor, shape) -> torch.Tensor:
    """Permutation that sorts rows by (batch, x, y, z): canonical row j is row order[j]."""
    c = coords.long()
    key = ((c[:, 0] * int(shape[0]) + c[:, 1]) * int(shape[1]) + c[:, 2]) * int(shape[2]) + c[:, 3]
    return torch.argsort(key)


def site_digest(coords: torch.Tensor) -> list:
    """[count, checksum] of a site set, independent of row order."""
    c = coords.long().cpu()
    h = (c[:, 0] * 73856093) ^ (c[:, 1] * 19349663) ^ (c[:, 2] * 83492791) ^ (c[:, 3] * 50331653)
    return [int(c.shape[0]), int((h % 1_000_000_007).sum())]


def to_native(canon: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rows in canonical (site-sorted) order -> the runner's order."""
    out = torch.empty_like(canon)
    out[order] = canon
    return out


class SparseconvRunner:
    name = "sparseconv"

    def __init__(self, kind, d, device):
        """d: coords int32 [N, 4] and weight / bias on `device` (weight's dtype is the layer's), spatial_shape."""
        import sparseconv
        import sparseconv.nn as spnn

        self.sc, self.kind = sparseconv, kind
        w, b = d["weight"], d["bias"]
        cin, cout = w.shape[3], w.shape[4]
        kw = {"device": device, "dtype": w.dtype}
        self.coords, self.shape = d["coords"], list(d["spatial_shape"])
        base = sparseconv.SparseTensor(torch.zeros(self.coords.shape[0], cin, **kw), self.coords,
                                       spatial_shape=self.shape, batch_size=1)
        if kind == "subm":
            self.conv, self.src = spnn.SubMConv3d(cin, cout, 3, bias=True, **kw), base
        elif kind == "strided":
            self.conv = spnn.SparseConv3d(cin, cout, 3, stride=2, padding=1, bias=True, indice_key="k", **kw)
            self.src = base
        else:
            down = spnn.SparseConv3d(cin, cin, 3, stride=2, padding=1, bias=False, indice_key="k", **kw)
            with torch.no_grad():
                self.src = down(base)  # the strided output: the inverse conv's input, its map under "k"
            self.conv = spnn.SparseInverseConv3d(cin, cout, 3, indice_key="k", bias=True, **kw)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(b)
            out = self.conv(self.src)  # builds the map (and its transpose) into the cache every call reuses
        self.in_order = site_order(self.src.coords, self.src.spatial_shape)
        self.out_order = site_order(out.coords, out.spatial_shape)
        self.in_sites, self.out_sites = site_digest(self.src.coords), site_digest(out.coords)

    def info(self):
        return {"version": str(getattr(self.sc, "__version__", ""))}

    def with_cache(self, feats):
        return self.src.replace(feats)  # replace() keeps the kernel-map cache

    def build_map(self, _=None):
        ops = torch.ops.sparseconv
        if self.kind == "subm":
            return ops.build_subm_map(self.coords, KSIZE, [1, 1, 1])
        _, nbr = ops.build_strided_map(self.coords, self.shape, KSIZE, STRIDE, PAD, [1, 1, 1])
        return ops.invert_map(nbr, self.coords.shape[0])  # the transpose every strided forward / inverse needs

    def pairs(self) -> int:
        return int((self.build_map() >= 0).sum())

    def forward(self, x):
        return self.conv(x).feats

    def weight_grad(self):
        return self.conv.weight.grad

    def bias_grad(self):
        return self.conv.bias.grad

    def zero_grad(self):
        self.conv.weight.grad = None
        self.conv.bias.grad = None


class SpconvRunner:
    """spconv 2.x's own layers (training mode, its default algorithm: implicit GEMM on CUDA, Native on the CPU
    wheel). Map cached: subm and inverse layers get a SparseConvTensor whose indice_dict holds the map; spconv's
    strided layer rebuilds its map on every call, so its cached forward is peers.spconv_cached_conv (the rest of
    spconv's forward after the map)."""

    name = "spconv"

    def __init__(self, kind, d, device):
        import peers

        self.peers, self.kind = peers, kind
        self.sp = peers.load_spconv()
        if self.sp is None:
            raise RuntimeError(f"spconv is not importable: {peers.spconv_error()}")
        w, b = d["weight"], d["bias"]
        cin, cout = w.shape[3], w.shape[4]
        self.coords = d["coords"].to(torch.int32).contiguous()
        self.shape = list(d["spatial_shape"])
        sp = self.sp
        if kind == "subm":
            conv = sp.SubMConv3d(cin, cout, 3, bias=True, indice_key="k")
        elif kind == "strided":
            conv = sp.SparseConv3d(cin, cout, 3, stride=2, padding=1, bias=True, indice_key="k")
        else:
            conv = sp.SparseInverseConv3d(cin, cout, 3, indice_key="k", bias=True)
        self.conv = conv.to(device=device, dtype=w.dtype).train()
        with torch.no_grad():
            self.conv.weight.copy_(peers.weight_to_spconv(w, self.conv.weight.shape))
            self.conv.bias.copy_(b)
        self.geometry = None if kind != "inverse" else (KSIZE, STRIDE, PAD, False)
        self.out_ids, self.data, self.out_shape = self.build_map()
        if kind == "inverse":  # input: the strided conv's output sites; output: the scene's sites
            in_c, in_s, out_c, out_s = self.out_ids, self.out_shape, self.coords, self.shape
        else:
            in_c, in_s, out_c, out_s = self.coords, self.shape, self.out_ids, self.out_shape
        self.in_coords, self.in_shape = in_c, list(in_s)
        self.in_order, self.out_order = site_order(in_c, in_s), site_order(out_c, out_s)
        self.in_sites, self.out_sites = site_digest(in_c), site_digest(out_c)

    def info(self):
        return {"version": self.peers.spconv_version(), "algo": str(self.conv.algo)}

    def with_cache(self, feats):
        if self.kind == "strided":
            return feats
        t = self.sp.SparseConvTensor(feats, self.in_coords, self.in_shape, 1)
        t.indice_dict = {"k": self.data}
        return t

    def build_map(self, _=None):
        return self.peers.spconv_indice_data(self.conv, self.coords, self.shape, 1, self.geometry)

    def pairs(self) -> int:
        return self.peers.spconv_pair_count(self.data)

    def forward(self, x):
        if self.kind == "strided":
            return self.peers.spconv_cached_conv(self.conv, x, self.data)
        return self.conv(x).features

    def weight_grad(self):
        return self.conv.weight.grad.permute(1, 2, 3, 4, 0)  # [Cout, k0, k1, k2, Cin] -> ours

    def bias_grad(self):
        return self.conv.bias.grad

    def zero_grad(self):
        self.conv.weight.grad = None
        self.conv.bias.grad = None


class Open3DRunner:
    """open3d.ml.torch SparseConv with our weights (subm only, CPU, float32).

    Positions are voxel centres ``(coords + 0.5) * voxel_size`` in metres; its kernel is [k, k, k, Cin, Cout]
    indexed (z, y, x), i.e. ours with axes 0 and 2 swapped. "Map cached" calls ``open3d.ml.torch.ops.
    continuous_conv`` with the neighbour lists of one search, as the layer does after its search; layer_output()
    is the layer's own call (search included), checked against the timed path.
    """

    name = "open3d"

    def __init__(self, kind, d, device):
        if kind != "subm":
            raise ValueError("the Open3D comparison covers SubMConv3d only")
        import open3d
        import open3d.ml.torch as ml3d

        self.o3d, self.ops = open3d, ml3d.ops
        w, b = d["weight"], d["bias"]
        self.vs = float(d["voxel_size"])
        self.layer = ml3d.layers.SparseConv(w.shape[3], w.shape[4], [3, 3, 3], use_bias=True).to(device)
        with torch.no_grad():
            self.layer.kernel.copy_(w.permute(2, 1, 0, 3, 4))  # ours (x, y, z) -> its (z, y, x)
            self.layer.bias.copy_(b)
        coords = d["coords"]
        self.pos = ((coords[:, 1:].double() + 0.5) * self.vs).float().contiguous()  # float64, then rounded once
        self.extents = torch.full([1, 1], self.vs * 3, dtype=torch.float32)
        self.empty = torch.empty((0,), dtype=torch.float32, device=self.pos.device)
        self.nns = self.build_map()
        self.in_order = self.out_order = site_order(coords, d["spatial_shape"])
        self.in_sites = self.out_sites = site_digest(coords)

    def info(self):
        return {"version": self.o3d.__version__}

    def with_cache(self, feats):
        return feats

    def build_map(self, _=None):
        """The search SparseConv.forward runs (same radius and hash-table size)."""
        L = self.layer
        return L.fixed_radius_search(self.pos, queries=self.pos - L.offset * self.vs,
                                     radius=L.kernel_size[0] * self.vs * 0.51, hash_table_size_factor=1 / 64)

    def pairs(self) -> int:
        return int(self.nns.neighbors_index.shape[0])

    def layer_output(self, feats):
        return self.layer(feats, self.pos, self.pos, self.vs)

    def forward(self, feats):
        L = self.layer
        out = self.ops.continuous_conv(
            filters=L.kernel, out_positions=self.pos, extents=self.extents, offset=L.offset,
            inp_positions=self.pos, inp_features=feats, inp_importance=self.empty,
            neighbors_index=self.nns.neighbors_index, neighbors_importance=self.empty,
            neighbors_row_splits=self.nns.neighbors_row_splits, align_corners=False,
            coordinate_mapping="identity", interpolation="nearest_neighbor", normalize=False, allow_tf32=False)
        return out + L.bias

    def weight_grad(self):
        return self.layer.kernel.grad.permute(2, 1, 0, 3, 4)  # its (z, y, x) -> ours

    def bias_grad(self):
        return self.layer.bias.grad

    def zero_grad(self):
        self.layer.kernel.grad = None
        self.layer.bias.grad = None


RUNNERS = {"sparseconv": SparseconvRunner, "spconv": SpconvRunner, "open3d": Open3DRunner}
