"""A joint scale chosen by a D-independent alignment score (``calibration.criterion=alignment``).

The L_DSM closed form (``mmdisco.calibration``) is the right scale for a D that estimates the
density ratio; for a D that does not (README, "Guidance that aligns") it is not, and the paper
grid-searched instead. This automates that search after training: for each scale of
``calibration.grid`` it samples ``calibration.pairs`` pairs guided by the trained D (one scale
for both modalities, the run's sampler, the held-out pairs' captions as prompts, a noise seed
no evaluation uses), scores them with a measure that does not involve D, and keeps the best
scale (ties: the smaller). Scorers:

- ``synthetic``: the synthetic world's decoders (``mmdisco.metrics.synthetic``): the fraction of
  pairs that agree on both class and onset, times the class balance and the onset balance
  (normalised entropies of the decoded classes and onsets, 1 for the world's uniform laws).
  Agreement alone rewards a scale at which D's gradient herds every pair into the classes D
  scores highest (README, "Guidance that aligns": 63 of 64 guided pairs yellow); the balance
  factors make the joint keep the world's marginals as well as couple;
- ``synthetic_agreement``: that fraction alone (the criterion of stop 11, for the ablation);
- ``av_align``: the mean AV-Align (``mmdisco.metrics.av_align``, the TempoTokens protocol) of
  the decoded clips, for bases that decode to media.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmdisco.bases.protocol import MODALITIES
from mmdisco.guidance import JointGuidance
from mmdisco.runs import sample_in_batches
from mmdisco.sampling import build_sampler

SCORERS = ("synthetic", "synthetic_agreement", "av_align")
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
    if scorer in ("synthetic", "synthetic_agreement"):
        summary = synthetic_summary(bases, samples)
        score = summary["semantic_and_temporal"]
        if scorer == "synthetic":
            score *= summary["class_balance"] * summary["onset_balance"]
        return 0.0 if np.isnan(score) else float(score)
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
    buckets: int | None = None,
) -> tuple[float | list[float], dict[str, float]]:
    """The scale of ``grid`` whose guided samples score best (ties: the smaller) and the score
    of every scale tried. The same ``seed`` (hence the same initial noise) for every scale.

    With ``buckets`` (``calibration.per_bucket``): then one pass over the equal-width buckets of
    t in the high-noise half [T/2, T), highest noise first, that tries each at the grid's next
    smaller scale and at 1, the others held, and keeps a change that scores at least as well;
    returns the list of scales per bucket. A D's errors are not the same at every t: on the
    synthetic world a D whose gradient herds classes at t in [500, 750) at scale 10 aligns
    without herding when that bucket is at 1 (README, "Guidance that aligns"). What herds is
    settled at high noise; at low noise a smaller scale only loses the fine alignment (onsets),
    and 32 calibration pairs tie often enough that a search there lowered t < 250 to 3 on a tie
    and lost onset agreement on fresh pairs. Only smaller scales are tried: a larger one
    amplifies D's errors, and a search that could raise one picked 30 at t in [250, 500), which
    herded 42 of 64 fresh pairs into one class.
    """
    grid = sorted(float(s) for s in grid)
    if not grid or grid[0] <= 0:
        raise ValueError(f"calibration.grid must be a non-empty list of scales > 0, got {grid}")
    if num < 1:
        raise ValueError(f"calibration.pairs must be >= 1, got {num}")
    if buckets is not None and buckets < 1:
        raise ValueError(f"calibration.buckets must be >= 1, got {buckets}")
    scores: dict[str, float] = {}

    def evaluate(scale) -> float:
        if not isinstance(scale, float) and len(set(scale)) == 1:
            scale = scale[0]  # one scale for every bucket: the grid's entry
        key = f"{scale:g}" if isinstance(scale, float) else str([float(f"{x:g}") for x in scale])
        if key not in scores:
            both = scale if isinstance(scale, float) else dict.fromkeys(MODALITIES, scale)
            model = JointGuidance(bases, discriminator, both, discriminator_cfg)
            sampler = build_sampler(model, sampler_cfg)
            samples = sample_in_batches(
                sampler, bases, num, batch_size, seed, device, progress, prompts
            )
            scores[key] = alignment_score(bases, samples, scorer)
            if progress:
                print(f"  joint scale {key}: {scorer} alignment {scores[key]:.3f}")
        return scores[key]

    for s in grid:
        evaluate(s)
    best = max(grid, key=lambda s: (scores[f"{s:g}"], -s))
    if buckets is None:
        return best, scores
    profile, top = [best] * buckets, scores[f"{best:g}"]
    i = grid.index(best)
    smaller = sorted({s for s in (1.0, *grid[max(i - 1, 0) : i]) if s < best}, reverse=True)
    for b in reversed(range(buckets // 2, buckets)):  # high noise first: classes settle there
        for s in smaller:
            trial = [*profile[:b], s, *profile[b + 1 :]]
            score = evaluate(trial)
            if score >= top:
                profile, top = trial, score
    return profile, scores
