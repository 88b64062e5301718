"""Seed streams of training: everything random about step s is drawn from generators seeded by
(run seed, stream, s) alone, so W processes draw what one draws and a resumed run needs no
generator state to continue the same sequence of batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

# generator streams of one step (see step_generator)
REAL_STREAM, FAKE_STREAM, LOSS_STREAM, CALIBRATION_STREAM = 0, 1, 2, 3
# precomputed L_DSM targets (train.dsm_draws, mmdisco.pairs.dsm): the K draws of (t, noise,
# prompt kept) of real pair i come from (seed, DSM_DRAW_STREAM, i); which of them step s uses
# from (seed, DSM_PICK_STREAM, s)
DSM_DRAW_STREAM, DSM_PICK_STREAM = 4, 5


def step_seed(seed: int, stream: int, step: int) -> int:
    """A 64-bit seed that names (run seed, stream, step): independent streams, no shared state."""
    words = np.random.SeedSequence([seed, stream, step]).generate_state(2, np.uint32)
    return (int(words[0]) << 32 | int(words[1])) & 0x7FFF_FFFF_FFFF_FFFF


def step_generator(seed: int, stream: int, step: int, device="cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(step_seed(seed, stream, step))


class StepIndices(Sampler):
    """Batch sampler: for every step in [start, steps) the global batch of ``batch_size``
    indices (uniform, with replacement, drawn from ``step_generator(seed, stream, step)``) and
    this process's slice of it."""

    def __init__(self, num_items, batch_size, seed, stream, start, steps, rank=0, world_size=1):
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.stream, self.start, self.steps = seed, stream, start, steps
        self.local = batch_size // world_size
        self.offset = rank * self.local

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            g = step_generator(self.seed, self.stream, step)
            idx = torch.randint(0, self.num_items, (self.batch_size,), generator=g)
            yield idx[self.offset : self.offset + self.local].tolist()


class StepIndicesWithDraws(StepIndices):
    """:class:`StepIndices` (the same pair indices) with, for each pair, which of its ``draws``
    precomputed L_DSM draws step s uses (uniform, from ``(seed, DSM_PICK_STREAM, s)``, drawn
    for the global batch and sliced like the indices): batches of ``(index, draw)`` tuples."""

    def __init__(self, num_items, batch_size, seed, stream, start, steps, draws, rank=0, world=1):
        super().__init__(num_items, batch_size, seed, stream, start, steps, rank, world)
        self.draws = int(draws)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step, idx in zip(range(self.start, self.steps), super().__iter__()):
            g = step_generator(self.seed, DSM_PICK_STREAM, step)
            k = torch.randint(0, self.draws, (self.batch_size,), generator=g)
            yield list(zip(idx, k[self.offset : self.offset + self.local].tolist()))
