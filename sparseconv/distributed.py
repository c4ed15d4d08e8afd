"""Pieces for data-parallel training and inference with torch.distributed (torchrun, DDP), CPU or CUDA.

Under `torchrun --nproc_per_node N script.py` (add --nnodes/--node_rank/--rdzv_endpoint for several machines):

    from sparseconv import distributed as sd
    rank, world = sd.init()                         # process group from torchrun's env; (0, 1) without it
    model = sd.convert_sync_batchnorm(model)        # batch statistics over the global batch
    model = sd.wrap(model)                          # DistributedDataParallel when world > 1
    for epoch in range(epochs):
        for batch in batches(sd.shard(train_files, seed=epoch, pad=True)):   # same step count on every rank
            ...
        totals = sd.reduce_sum({"correct": correct, "seen": seen, "loss_sum": loss_sum})  # every rank gets sums
        sd.save_on_main(sd.unwrap(model).state_dict(), "model.pt")              # rank 0 writes, all wait
    # inference over many files: each rank classifies sd.shard(files) (no padding: every file exactly once)
    sd.cleanup()

Every helper is a no-op (or plain single-process behaviour) when no process group is initialised, so one code
path serves both.
"""
import os

import torch
import torch.distributed as dist
from torch import nn

from .determinism import batch_norm
from .io.atomic import atomic_output


def is_initialized():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if is_initialized() else 1


def is_main():
    return get_rank() == 0


def init(backend=None):
    """Initialises the default process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) when WORLD_SIZE > 1 and none exists yet; backend defaults to nccl with CUDA, else gloo.
    Returns (rank, world_size)."""
    if not is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return get_rank(), get_world_size()


def cleanup():
    if is_initialized():
        dist.destroy_process_group()


def shard(items, rank=None, world_size=None, seed=None, pad=False):
    """This rank's share of `items`: items[rank::world_size] (sizes differ by at most one, every item once),
    after a shuffle with `seed` (the same permutation on every rank) when seed is given. pad=True repeats items
    from the start so that every rank gets the same count, which DDP training needs (a rank with one batch
    fewer would leave the others waiting in the gradient all-reduce); leave it off for inference. For a
    torch Dataset, torch.utils.data.distributed.DistributedSampler does the same job."""
    items = list(items)
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world_size is None else world_size
    if seed is not None:
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
        items = [items[i] for i in order]
    if pad and items and len(items) % world:
        extra = world - len(items) % world
        items += (items * (extra // len(items) + 1))[:extra]
    return items[rank::world]


def shard_balanced(items, weights, rank=None, world_size=None):
    """This rank's share of `items` with the total weight (e.g. file sizes) balanced over ranks: heaviest
    first, each to the rank with the least so far (ties: lowest rank), the same on every rank; every item
    exactly once, in the input order within a share."""
    items, weights = list(items), [float(w) for w in weights]
    if len(items) != len(weights):
        raise ValueError(f"weights: expected one per item ({len(items)}), got {len(weights)}")
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world_size is None else world_size
    load, owner = [0.0] * world, [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: (-weights[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += weights[i]
    return [item for item, r in zip(items, owner) if r == rank]


def reduce_sum(values):
    """{name: number or tensor} -> the same names with sums over all ranks (numbers come back as floats,
    tensors as tensors, e.g. confusion matrices). Send sums and counts, not means: a mean of per-rank means is
    wrong when ranks saw different numbers of samples."""
    if not is_initialized():
        return {k: (v.clone() if isinstance(v, torch.Tensor) else float(v)) for k, v in values.items()}
    out = {}
    scalars = [k for k, v in values.items() if not isinstance(v, torch.Tensor)]
    if scalars:
        flat = torch.tensor([float(values[k]) for k in scalars], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(flat)
        out.update(zip(scalars, flat.tolist()))
    for k, v in values.items():
        if isinstance(v, torch.Tensor):
            t = v.detach().to(_comm_device(), copy=True)
            dist.all_reduce(t)
            out[k] = t.to(v.device)
    return {k: out[k] for k in values}


def _comm_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def barrier():
    if is_initialized():
        dist.barrier()


def check_replicas(model):
    """Raises RuntimeError when the parameters and buffers of `model` differ between ranks (compares each
    tensor's sum and sum of squares, in float64, by all-reducing their max and min): DDP's promise that every
    replica holds the same weights, checked rather than assumed. No-op without a process group."""
    if get_world_size() == 1:
        return
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    if not tensors:
        return
    stats = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors]).flatten()
    stats = stats.to(_comm_device())
    hi, lo = stats.clone(), stats.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    if not torch.equal(hi, lo):
        bad = int((hi != lo).nonzero()[0, 0]) // 2
        raise RuntimeError(f"model: the replicas differ between ranks (first at tensor {bad} of {len(tensors)})")


def save_on_main(obj, path):
    """torch.save on rank 0 only (to a temporary name, then renamed, so a reader never sees half a file);
    every rank waits until it is written."""
    if is_main():
        with atomic_output(path) as tmp:
            torch.save(obj, tmp)
    if is_initialized():
        dist.barrier()


def wrap(model, **ddp_kwargs):
    """DistributedDataParallel(model) when world_size > 1 (device_ids set for a CUDA model), else model."""
    if get_world_size() == 1:
        return model
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cuda" and "device_ids" not in ddp_kwargs:
        ddp_kwargs["device_ids"] = [param.device]
    return nn.parallel.DistributedDataParallel(model, **ddp_kwargs)


def unwrap(model):
    """The module inside DDP (what to save: its state_dict has no 'module.' prefix)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with statistics over the batches of all ranks, for any device and backend.

    torch.nn.SyncBatchNorm raises for CPU tensors ("expected input tensor to be on GPU"), so CPU training with
    gloo needs this. As torch's: the row sums and count, then the centred sums of squares, are summed over
    ranks (2 all-reduces of C + 1 and C values per layer in forward, one of 2C values in backward for the
    input gradient), so the result equals batch norm on the concatenated global batch; the parameters'
    gradients stay per rank for DDP to average. Its sums do not depend on the thread count
    (sparseconv.determinism.batch_norm). Without a process group, or in eval mode, it is plain batch norm.
    Input [N, C, *], as BatchNorm1d/2d/3d take.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"input: expected [N, C, *], got shape {tuple(x.shape)}")

    def forward(self, x):
        self._check_input_dim(x)
        synced = self.training and is_initialized() and dist.get_world_size(self.process_group) > 1
        return batch_norm(self, x, self._all_reduce if synced else None)

    def _all_reduce(self, t):
        dist.all_reduce(t, group=self.process_group)


def convert_sync_batchnorm(model, process_group=None):
    """Every torch batch norm in model (including the BatchNorm1d inside SparseBatchNorm and the dense heads'
    BatchNorm3d) replaced by a synchronised one: torch.nn.SyncBatchNorm for CUDA models (its fused kernels),
    sparseconv.distributed.SyncBatchNorm otherwise. Parameters and running statistics are kept."""
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    return _convert(model, process_group)


def _convert(module, process_group):
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group)
        # The same parameter and buffer objects, as torch's converter does: an optimizer built already keeps
        # working, and dtype and device stay.
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.training = module.training
        return new
    for name, child in module.named_children():
        new = _convert(child, process_group)
        if new is not child:
            setattr(module, name, new)
    return module
