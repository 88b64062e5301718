"""Joint scales from held-out real pairs: the closed form that minimises L_DSM (beyond the paper).

The paper grid-searched its joint scales (x8 for VideoCrafter2's video). If D's logit were the
log density ratio of the noised joint against the product of the base marginals (method.md,
"Joint score"), its residual r_m would be the exact joint correction and scale 1 would be right.
For a learned D the scale s_m that makes eps_m + s_m r_m closest to the noise actually added,
on real pairs D has not been trained on, is (least squares on Eq. 13-15)

    s*_m = E[<noise_m - eps_m, r_m>] / E[||r_m||^2]

over pairs, uniform t and fresh noise; per bucket of t when ``per_bucket``. It is 1 for an
oracle D and 1/c when D's logit is scaled by c (``tests/test_calibration.py``). Two diagnostics
come with it: ``res_ratio`` = E||r|| / E||eps|| (the residual's size against the base noise) and
``cosine`` = E<noise - eps, r> / sqrt(E||noise - eps||^2 E||r||^2) (how much of the base's error
the residual points along; 0 for a residual orthogonal to the joint correction).

    stats = residual_statistics(D, bases, heldout_pairs, buckets=4, draws=4, generator=g)
    scales = dsm_optimal_scales(stats)              # {"audio": 1.3, "video": 0.9}
    save_joint_scales(run_dir / "joint_scales.json", scales, stats)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from mmdisco.bases.protocol import MODALITIES
from mmdisco.guidance import discriminator_condition, residual
from mmdisco.io import atomic_write_bytes

SCALES_FILE = "joint_scales.json"
KEYS = ("cross", "res2", "err2", "res_norm", "eps_norm", "count")


def _bucket_steps(lo: int, hi: int, n: int, generator, device) -> Tensor:
    """n integer steps uniform in [lo, hi)."""
    return torch.randint(lo, hi, (n,), generator=generator, device="cpu").to(device)


@torch.no_grad()
def _accumulate(stats, k: int, eps, res, noise) -> None:
    for m in MODALITIES:
        e, r, n = eps[m].float().flatten(1), res[m].float().flatten(1), noise[m].flatten(1)
        s = stats[m]
        s["cross"][k] += ((n - e) * r).sum().item()
        s["res2"][k] += (r * r).sum().item()
        s["err2"][k] += ((n - e) ** 2).sum().item()
        s["res_norm"][k] += r.norm(dim=1).sum().item()
        s["eps_norm"][k] += e.norm(dim=1).sum().item()
        s["count"][k] += r.shape[0]


def residual_statistics(
    discriminator: nn.Module,
    bases,
    pairs: Mapping[str, Tensor],
    buckets: int = 4,
    draws: int = 1,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    conds: Mapping | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Sums over ``pairs`` x ``draws`` per bucket of t (stratified: every pair is drawn in every
    bucket) of <noise - eps, r>, ||r||^2, ||noise - eps||^2, ||r||, ||eps|| and the count.

    ``pairs`` are clean real pairs ``{m: (N, ...)}`` not used to train D; ``conds`` (optional)
    their per-modality :class:`~mmdisco.bases.Condition` (batched like the pairs).
    """
    if buckets < 1 or draws < 1:
        raise ValueError(f"buckets and draws must be >= 1, got {buckets} / {draws}")
    num = pairs["audio"].shape[0]
    if num == 0:
        raise ValueError("no held-out pairs: set calibration.holdout > 0")
    T = bases.schedules["audio"].num_train_timesteps
    device = next(iter(pairs.values())).device
    stats = {m: {k: [0.0] * buckets for k in KEYS} for m in MODALITIES}
    for _ in range(draws):
        for start in range(0, num, batch_size):
            idx = slice(start, min(start + batch_size, num))
            x0 = {m: pairs[m][idx] for m in MODALITIES}
            c = None if conds is None else {m: _take(conds[m], idx) for m in conds}
            b = x0["audio"].shape[0]
            for k in range(buckets):
                t = _bucket_steps(k * T // buckets, (k + 1) * T // buckets, b, generator, device)
                noise = {
                    m: torch.randn(x.shape, generator=generator, device="cpu").to(device)
                    for m, x in x0.items()
                }
                xt = {m: bases.schedules[m].add_noise(x0[m], noise[m], t) for m in MODALITIES}
                eps = bases.predict_noise(xt, t, c)
                d_cond = discriminator_condition(c)
                res, _ = residual(discriminator, xt, t, bases.schedules, d_cond)
                _accumulate(stats, k, eps, res, noise)
    return stats


def _take(cond, idx):
    """Pairs ``idx`` of a batched Condition, without CFG (L_DSM's target is the conditional
    prediction at scale 1, as in training)."""
    if cond is None:
        return None

    def cut(x):
        if isinstance(x, Tensor) and x.shape[0] > 1:
            return x[idx]
        if isinstance(x, Mapping):
            return {k: cut(v) for k, v in x.items()}
        return x

    return replace(cond.with_scale(1.0), cond=cut(cond.cond), pooled=cut(cond.pooled), uncond=None)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def dsm_optimal_scales(stats, per_bucket: bool = False, min_scale: float = 0.0):
    """s*_m = sum <noise - eps, r> / sum ||r||^2 per modality (a float), or per bucket of t (a
    list over equal-width buckets of [0, T)) with ``per_bucket``; clipped below at ``min_scale``
    (a negative s* means the residual points against the correction: guidance is then off)."""
    out = {}
    for m in MODALITIES:
        s = stats[m]
        if per_bucket:
            out[m] = [max(min_scale, _ratio(c, r)) for c, r in zip(s["cross"], s["res2"])]
        else:
            out[m] = max(min_scale, _ratio(sum(s["cross"]), sum(s["res2"])))
    return out


def diagnostics(stats) -> dict[str, dict[str, float | list[float]]]:
    """res_ratio (E||r|| / E||eps||) and cosine (see the module docstring), overall and per
    bucket of t, per modality."""
    out = {}
    for m in MODALITIES:
        s = stats[m]
        per = {
            "res_ratio": [_ratio(a, b) for a, b in zip(s["res_norm"], s["eps_norm"])],
            "cosine": [
                _ratio(c, math.sqrt(r * e)) for c, r, e in zip(s["cross"], s["res2"], s["err2"])
            ],
        }
        total = {k: sum(v) for k, v in s.items()}
        out[m] = {
            "res_ratio": _ratio(total["res_norm"], total["eps_norm"]),
            "cosine": _ratio(total["cross"], math.sqrt(total["res2"] * total["err2"])),
            "res_ratio_by_t": per["res_ratio"],
            "cosine_by_t": per["cosine"],
            "scale_by_t": [_ratio(c, r) for c, r in zip(s["cross"], s["res2"])],
        }
    return out


def save_joint_scales(path: str | Path, scales, stats=None, extra: Mapping | None = None) -> None:
    """``{"audio": ..., "video": ...}`` (the scales the sampler reads) plus, under "diagnostics",
    what they were computed from; written atomically."""
    doc = {m: scales[m] for m in MODALITIES}
    if stats is not None:
        doc["diagnostics"] = diagnostics(stats)
    if extra:
        doc.update(extra)
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())


def load_joint_scales(path: str | Path) -> dict[str, float | list[float]]:
    """The per-modality scales of a ``joint_scales.json`` (a float or a list over t buckets)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: joint_scales=auto reads the scales train.py computes after "
            f"training (calibration.holdout > 0). Re-run `python scripts/calibrate.py "
            f"run_dir={path.parent}` or give numbers, e.g. joint_scales={{audio: 1, video: 1}}"
        )
    try:
        doc = json.loads(path.read_text())
        return {m: doc[m] for m in MODALITIES}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is not a valid joint-scales file ({e}): delete it and re-run "
            f"`python scripts/calibrate.py run_dir={path.parent}`"
        ) from e
