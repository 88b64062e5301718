"""A joint scale chosen by a D-independent alignment score (``calibration.criterion=alignment``).

The L_DSM closed form (``mmdisco.calibration``) is the right scale for a D that estimates the
density ratio; for a D that does not (README, "Guidance that aligns") it is not, and the paper
grid-searched instead. This automates that search after training: for each scale of
``calibration.grid`` it samples ``calibration.pairs`` pairs guided by the trained D (one scale
for both modalities, the run's sampler, the held-out pairs' captions as prompts, a noise seed
no evaluation uses), scores them with a measure that does not involve D, and keeps the best
scale (ties: the smaller). Scorers:

- ``synthetic``: the synthetic world's decoders (``mmdisco.metrics.synthetic``), the fraction of
  pairs that agree on both class and onset;
- ``av_align``: the mean AV-Align (``mmdisco.metrics.av_align``, the TempoTokens protocol) of
  the decoded clips, for bases that decode to media.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmdisco.guidance import JointGuidance
from mmdisco.runs import sample_in_batches
from mmdisco.sampling import build_sampler

SCORERS = ("synthetic", "av_align")
CRITERIA = ("dsm", "alignment")


def alignment_score(bases, samples: dict[str, torch.Tensor], scorer: str) -> float:
    """The D-independent alignment of sampled latents, decoded by ``bases``."""
    if scorer not in SCORERS:
        raise ValueError(f"calibration.scorer must be one of {SCORERS}, got {scorer!r}")
    if not bases.decodes_to_media:
        raise ValueError(
            "calibration.criterion=alignment scores decoded clips, and these bases do not decode "
            "to media: use calibration.criterion=dsm"
        )
    if scorer == "synthetic":
        return float(synthetic_summary(bases, samples)["semantic_and_temporal"])
    from mmdisco.metrics.av_align import av_align_score  # the eval extras (opencv, librosa)

    frames, waves = decoded(bases, samples)
    fps, sr = bases.fps, bases.sample_rate
    return float(np.mean([av_align_score(f, fps, w, sr) for f, w in zip(frames, waves)]))


def decoded(bases, samples: dict[str, torch.Tensor]):
    """Sampled latents as media arrays: frames (N, F, H, W, 3) uint8 and waveforms (N, ...)."""
    media = bases.decode({m: x.to(bases.device) for m, x in samples.items()})
    return (torch.as_tensor(media["video"]).cpu().numpy(),
            torch.as_tensor(media["audio"]).cpu().numpy())  # fmt: skip


def synthetic_summary(bases, samples: dict[str, torch.Tensor], av_align: bool = False) -> dict:
    """The synthetic world's decoder metrics of sampled latents (decoded in memory)."""
    from mmdisco.metrics.synthetic import clip_row, summarize

    frames, waves = decoded(bases, samples)
    fps, sr = bases.fps, bases.sample_rate
    return summarize([clip_row(f, fps, w, sr, av_align) for f, w in zip(frames, waves)])


def search_joint_scale(
    bases,
    discriminator,
    sampler_cfg,
    grid: Sequence[float],
    num: int,
    seed: int,
    scorer: str,
    device="cpu",
    prompts: list[str] | None = None,
    discriminator_cfg: bool = False,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[float, dict[str, float]]:
    """The scale of ``grid`` whose guided samples score best (ties: the smaller) and the score
    of every scale. The same ``seed`` (hence the same initial noise) for every scale."""
    grid = sorted(float(s) for s in grid)
    if not grid or grid[0] <= 0:
        raise ValueError(f"calibration.grid must be a non-empty list of scales > 0, got {grid}")
    if num < 1:
        raise ValueError(f"calibration.pairs must be >= 1, got {num}")
    scores = {}
    for s in grid:
        model = JointGuidance(bases, discriminator, s, discriminator_cfg)
        sampler = build_sampler(model, sampler_cfg)
        samples = sample_in_batches(
            sampler, bases, num, batch_size, seed, device, progress, prompts
        )
        scores[f"{s:g}"] = alignment_score(bases, samples, scorer)
        if progress:
            print(f"  joint scale {s:g}: {scorer} alignment {scores[f'{s:g}']:.3f}")
    best = max(grid, key=lambda s: (scores[f"{s:g}"], -s))
    return best, scores
