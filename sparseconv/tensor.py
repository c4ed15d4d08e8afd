"""SparseTensor: active sites (coords) with their feature rows, plus the kernel-map cache they share."""
import torch

from . import _C
from ._args import positive_int, triple

# The packed coordinate keys of the C++ side (csrc/coords.h).
AXIS_LIMIT = 1 << 17
BATCH_LIMIT = 1 << 12


_CUDA_BUILT = _C.build_info()["cuda"]


def _check_device(t, name):
    if t.device.type != "cpu" and not _CUDA_BUILT:
        raise ValueError(f"{name}: on device '{t.device}', but this build of sparseconv has CPU kernels only "
                         "(rebuild with FORCE_CUDA=1 on a machine with nvcc for CUDA)")


def _first_row(coords, bad_rows):
    i = int(torch.nonzero(bad_rows)[0, 0])
    return i, tuple(coords[i].tolist())


class SparseTensor:
    """feats float [N, C] at coords int32 [N, 4] = (batch, x, y, z) on a grid of spatial_shape (X, Y, Z).

    spatial_shape and batch_size default to max + 1 of the coordinates (1 when N = 0). Coordinates must be
    non-negative and unique (duplicates raise when a kernel map is built; `voxelize` merges points into unique
    voxels). Non-contiguous inputs are copied. `stride` records how far the sites are from the input grid.
    """

    __slots__ = ("feats", "coords", "spatial_shape", "batch_size", "stride", "kmaps", "sites")

    def __init__(self, feats, coords, spatial_shape=None, batch_size=None, stride=1):
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats: expected a torch.Tensor, got {type(feats).__name__}")
        if not isinstance(coords, torch.Tensor):
            raise TypeError(f"coords: expected a torch.Tensor, got {type(coords).__name__}")
        if not feats.is_floating_point():
            raise TypeError(f"feats: expected a floating-point tensor [N, C], got dtype {feats.dtype}")
        if feats.dim() != 2:
            raise ValueError(f"feats: expected shape [N, C], got {tuple(feats.shape)}")
        if coords.dtype != torch.int32:
            raise TypeError(f"coords: expected dtype torch.int32, got {coords.dtype}")
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords: expected shape [N, 4] (batch, x, y, z), got {tuple(coords.shape)}")
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats: expected {coords.shape[0]} rows (one per coords row), got {feats.shape[0]}")
        if feats.device != coords.device:
            raise ValueError(f"feats: on {feats.device} but coords on {coords.device}; expected one device")
        _check_device(coords, "coords")
        coords = coords.contiguous()
        n = coords.shape[0]
        if n:
            lo, hi = coords.amin(0).tolist(), coords.amax(0).tolist()
            if min(lo) < 0:
                i, row = _first_row(coords, (coords < 0).any(1))
                raise ValueError(f"coords: must be non-negative, row {i} is {row}")
        else:
            hi = [0, 0, 0, 0]
        if spatial_shape is None:
            spatial_shape = tuple(v + 1 for v in hi[1:])
        spatial_shape = triple(spatial_shape, "spatial_shape", 1, AXIS_LIMIT)
        if batch_size is None:
            batch_size = hi[0] + 1
        batch_size = positive_int(batch_size, "batch_size", BATCH_LIMIT)
        if n:
            if hi[0] >= batch_size:
                i, row = _first_row(coords, coords[:, 0] >= batch_size)
                raise ValueError(f"coords: row {i} {row} has batch index >= batch_size ({batch_size})")
            if any(h >= s for h, s in zip(hi[1:], spatial_shape)):
                shape = torch.tensor(spatial_shape, dtype=torch.int32, device=coords.device)
                i, row = _first_row(coords, (coords[:, 1:] >= shape).any(1))
                raise ValueError(f"coords: row {i} {row} lies outside spatial_shape {spatial_shape}")
        self._set(feats.contiguous(), coords, spatial_shape, batch_size, triple(stride, "stride", 1), {}, 0)

    def _set(self, feats, coords, spatial_shape, batch_size, stride, kmaps, sites):
        self.feats = feats
        self.coords = coords
        self.spatial_shape = spatial_shape
        self.batch_size = batch_size
        self.stride = stride
        self.kmaps = kmaps
        self.sites = sites
        return self

    @classmethod
    def _derived(cls, feats, coords, spatial_shape, batch_size, stride, kmaps, sites):
        """A layer's output: inputs already checked, the cache shared."""
        return cls.__new__(cls)._set(feats, coords, spatial_shape, batch_size, stride, kmaps, sites)

    def replace(self, feats):
        """Same sites (and kernel-map cache), new feature rows."""
        if not isinstance(feats, torch.Tensor) or not feats.is_floating_point():
            raise TypeError("feats: expected a floating-point tensor [N, C]")
        if feats.dim() != 2 or feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"feats: expected shape [{self.coords.shape[0]}, C], got {tuple(feats.shape)}")
        return SparseTensor._derived(feats.contiguous(), self.coords, self.spatial_shape, self.batch_size,
                                     self.stride, self.kmaps, self.sites)

    def to(self, *args, **kwargs):
        """Like torch.Tensor.to for feats; coords follow the device and stay int32."""
        feats = self.feats.to(*args, **kwargs)
        if feats.device == self.coords.device:
            return self.replace(feats)
        _check_device(feats, "device")
        coords = self.coords.to(feats.device)
        return SparseTensor._derived(feats, coords, self.spatial_shape, self.batch_size, self.stride, {}, 0)

    def pin_memory(self):
        """feats and coords in page-locked memory (what DataLoader(pin_memory=True) calls); the cache is left
        behind. Needs an accelerator build of torch, as torch.Tensor.pin_memory does."""
        return SparseTensor._derived(self.feats.pin_memory(), self.coords.pin_memory(), self.spatial_shape,
                                     self.batch_size, self.stride, {}, 0)

    # Pickling (torch.save, DataLoader workers, DDP spawn) keeps the data but not the kernel-map cache: maps are
    # rebuilt on first use, can be far larger than the features, and belong to the process that built them.
    def __getstate__(self):
        return self.feats, self.coords, self.spatial_shape, self.batch_size, self.stride

    def __setstate__(self, state):
        self._set(*state, {}, 0)

    @property
    def device(self):
        return self.feats.device

    @property
    def dtype(self):
        return self.feats.dtype

    def __len__(self):
        return self.coords.shape[0]

    def __repr__(self):
        return (f"SparseTensor(N={self.coords.shape[0]}, C={self.feats.shape[1]}, spatial_shape={self.spatial_shape}, "
                f"batch_size={self.batch_size}, stride={self.stride}, dtype={self.feats.dtype}, "
                f"device={self.feats.device})")

    def dense(self):
        """[B, C, X, Y, Z] with zeros at inactive sites; differentiable in feats."""
        X, Y, Z = self.spatial_shape
        out = self.feats.new_zeros(self.batch_size, X, Y, Z, self.feats.shape[1])
        c = self.coords.long()
        out = out.index_put((c[:, 0], c[:, 1], c[:, 2], c[:, 3]), self.feats)
        return out.permute(0, 4, 1, 2, 3).contiguous()

    @classmethod
    def from_dense(cls, t, stride=1):
        """Active sites = positions where any channel of t [B, C, X, Y, Z] is non-zero."""
        if not isinstance(t, torch.Tensor) or t.dim() != 5:
            raise ValueError(f"t: expected a tensor [B, C, X, Y, Z], got {getattr(t, 'shape', type(t))}")
        if not t.is_floating_point():
            raise TypeError(f"t: expected a floating-point tensor, got {t.dtype}")
        channels_last = t.permute(0, 2, 3, 4, 1)
        active = (channels_last != 0).any(-1)
        coords = torch.nonzero(active).to(torch.int32)
        return cls(channels_last[active], coords, tuple(t.shape[2:]), t.shape[0], stride)


# torch.load defaults to weights_only=True, which refuses classes it does not know; a SparseTensor holds only
# tensors, ints and tuples, so it is safe to allow.
torch.serialization.add_safe_globals([SparseTensor])


def sparse_collate(tensors):
    """Stacks SparseTensors along the batch: entry i's batches come after those of entries 0..i-1."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("tensors: expected at least one SparseTensor")
    for i, t in enumerate(tensors):
        if not isinstance(t, SparseTensor):
            raise TypeError(f"tensors[{i}]: expected a SparseTensor, got {type(t).__name__}")
        if t.stride != tensors[0].stride or t.feats.shape[1] != tensors[0].feats.shape[1]:
            raise ValueError(f"tensors[{i}]: stride {t.stride} / channels {t.feats.shape[1]} differ from "
                             f"tensors[0]'s {tensors[0].stride} / {tensors[0].feats.shape[1]}")
    offsets = torch.tensor([0] + [t.batch_size for t in tensors]).cumsum(0)
    coords = []
    for t, off in zip(tensors, offsets.tolist()):
        c = t.coords.clone()
        c[:, 0] += off
        coords.append(c)
    shape = tuple(max(t.spatial_shape[d] for t in tensors) for d in range(3))
    return SparseTensor(torch.cat([t.feats for t in tensors]), torch.cat(coords), shape, int(offsets[-1]),
                        tensors[0].stride)
