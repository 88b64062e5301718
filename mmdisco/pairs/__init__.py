"""The pairs stage: real and fake pairs prepared once into one sharded store, read as Datasets.

    data -> bases -> pairs -> discriminator + loss -> guidance -> sampler -> metrics

- ``store``: the sharded safetensors layout, resumable and rank-independent, read back by
  :class:`~mmdisco.pairs.store.ShardedPairs`;
- ``real``: every clip (or data-space sample) of a data set encoded once by the bases' codecs
  (the toy's codec is the identity);
- ``fakes``: pairs pre-sampled from the bare bases (no discriminator, no guidance);
- ``prompts``: the prompt tables stored with the pairs and the conditions rebuilt per batch;
- ``prepare``: what ``train.py`` asks for: both Datasets from the run's config.

Every data set takes the same path (no in-memory special case).
"""

from mmdisco.pairs.fakes import presample_fakes
from mmdisco.pairs.prompts import batch_conditions
from mmdisco.pairs.real import cache_real_latents
from mmdisco.pairs.store import ShardedPairs, collate_pairs

__all__ = [
    "ShardedPairs",
    "batch_conditions",
    "cache_real_latents",
    "collate_pairs",
    "presample_fakes",
]
