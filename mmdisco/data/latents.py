"""In-memory pairs as a Dataset, and the collate function every pair Dataset shares.

The training loop consumes pairs through ``torch.utils.data.Dataset`` objects whose samples are
dicts (``{"audio": (...), "video": (...)}`` plus optional conditions or captions), so the toy and
synthetic pairs held in memory and the sharded on-disk latent caches read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset


class TensorPairs(Dataset):
    """Pairs held as a dict of tensors with a shared first (sample) dimension.

    ``pairs[i]`` is ``{key: tensor[i]}``; ``__getitems__`` (used by ``DataLoader`` for a whole
    batch of indices) returns the batch already stacked, which :func:`collate_pairs` passes on.
    """

    def __init__(self, tensors: Mapping[str, Tensor]):
        if not tensors:
            raise ValueError("TensorPairs needs at least one tensor, e.g. audio=..., video=...")
        lengths = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"TensorPairs tensors must share their first dimension, got {lengths}")
        if next(iter(lengths.values())) == 0:
            raise ValueError("TensorPairs is empty: no pairs to train on")
        self.tensors = dict(tensors)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


def collate_pairs(samples: Sequence[Mapping] | Mapping) -> dict:
    """Stack a list of sample dicts into one batch dict (tensors stacked, other values listed).

    A dict is taken to be a batch already (``TensorPairs.__getitems__``) and returned as is.
    Keys missing from some samples are an error: a batch is all conditioned or none is.
    """
    if isinstance(samples, Mapping):
        return dict(samples)
    keys = set(samples[0])
    for s in samples[1:]:
        if set(s) != keys:
            raise ValueError(
                f"samples in one batch have different keys: {sorted(keys)} vs {sorted(s)}"
            )
    out = {}
    for k in samples[0]:
        values = [s[k] for s in samples]
        out[k] = torch.stack(values) if isinstance(values[0], Tensor) else values
    return out
