"""torch.utils.data.DataLoader support: a collate function that batches SparseTensors wherever they sit in a
sample.

    loader = DataLoader(dataset, batch_size=8, collate_fn=sparseconv.collate, num_workers=2, pin_memory=True)

Samples may be a SparseTensor, or tuples / lists / dicts holding SparseTensors next to tensors and numbers
(e.g. (cloud, label) -> (SparseTensor of 8 batch elements, tensor([8 labels]))). Worker processes send
SparseTensors back by pickling (feats and coords through shared memory; the kernel-map cache stays behind),
and pin_memory=True calls SparseTensor.pin_memory.
"""
from torch.utils.data._utils.collate import collate as _collate
from torch.utils.data._utils.collate import default_collate_fn_map

from .tensor import SparseTensor, sparse_collate


def _collate_sparse(batch, *, collate_fn_map=None):
    return sparse_collate(batch)


_COLLATE_FN_MAP = {**default_collate_fn_map, SparseTensor: _collate_sparse}


def collate(batch):
    """default_collate, except that SparseTensors are merged by sparse_collate (batch indices offset)."""
    return _collate(batch, collate_fn_map=_COLLATE_FN_MAP)
