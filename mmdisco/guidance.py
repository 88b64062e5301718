"""The one place where the discriminator meets the base models (paper Sec. 3.2, Eq. 11-12).

    r_m = -sigma_m(t) * d logit D(a_t, v_t, t) / d m_t            (residual noise)
    eps_joint_m = eps_m(m_t, t) + s_m * r_m                       (joint scale s_m)

One forward and one backward of D give the residuals of every modality. A text-conditional D
gets classifier-free guidance like its base: r = r_u + w_m (r_c - r_u), both branches in one
batched pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mmdisco.bases.protocol import MODALITIES, Condition
from mmdisco.schedule import NoiseSchedule, expand_as


def discriminator_condition(conds: Mapping[str, Condition | None] | None, uncond: bool = False):
    """The pooled prompt embeddings D takes, ``{m: (B, D_m)}``, or None for an unconditional D."""
    if not conds:
        return None
    pooled = {
        m: (c.pooled_uncond if uncond else c.pooled)
        for m, c in conds.items()
        if c is not None and c.pooled is not None
    }
    return pooled or None


def residual(
    discriminator: nn.Module,
    xs: Mapping[str, Tensor],
    t: Tensor,
    schedules: Mapping[str, NoiseSchedule],
    d_cond: Mapping[str, Tensor] | None = None,
    create_graph: bool = False,
    fp32: bool = False,
) -> tuple[dict[str, Tensor], Tensor]:
    """Residual noise r_m = -sigma_m(t) * grad_m logit for every modality, and the logit (B,).

    With ``create_graph=True`` the residuals stay differentiable w.r.t. D's parameters
    (L_DSM trains through them); otherwise the inputs are detached copies. With ``fp32=True``
    D's forward and the input gradient run in float32 with autocast disabled (inside a
    mixed-precision region the residual would otherwise be computed in bf16 / fp16).
    """
    if not create_graph:
        xs = {m: x.detach().requires_grad_(True) for m, x in xs.items()}
    elif not all(x.requires_grad for x in xs.values()):
        raise ValueError("with create_graph=True the inputs must require grad")
    precision = torch.autocast(t.device.type, enabled=False) if fp32 else contextlib.nullcontext()
    with torch.enable_grad(), precision:
        inputs = {m: x.float() for m, x in xs.items()} if fp32 else xs
        if fp32 and d_cond is not None:
            d_cond = {m: c.float() for m, c in d_cond.items()}
        logit = discriminator(inputs["audio"], inputs["video"], t, d_cond)
        grads = torch.autograd.grad(
            logit.sum(), [xs[m] for m in MODALITIES], create_graph=create_graph
        )
    res = {}
    for m, g in zip(MODALITIES, grads):
        sigma = schedules[m].coefficients(t)[1].to(device=g.device, dtype=g.dtype)
        res[m] = -expand_as(sigma, g) * g
    return res, logit


def scale_at(scale: float | Sequence[float], t: Tensor, num_train_timesteps: int):
    """The joint scale of each sample: a float, or a list over equal-width buckets of [0, T)
    picked by the sample's t (``mmdisco.calibration`` computes such lists)."""
    if isinstance(scale, (int, float)):
        return float(scale)
    scales = torch.as_tensor(list(scale), dtype=torch.float32, device=t.device)
    k = (t.long() * len(scales) // num_train_timesteps).clamp(0, len(scales) - 1)
    return scales[k]  # (B,)


def check_joint_scales(joint_scales) -> dict[str, float | list[float]]:
    """One scale per modality: a float (all) or ``{m: float or [float per bucket of t]}``."""
    if isinstance(joint_scales, str):
        raise ValueError(
            f"joint_scales={joint_scales!r}: 'auto' is read from a training run; resolve it with "
            "mmdisco.runs.resolve_joint_scales('auto', run_dir) and pass the result"
        )
    if not isinstance(joint_scales, Mapping):
        joint_scales = {m: float(joint_scales) for m in MODALITIES}
    missing = set(MODALITIES) - set(joint_scales)
    if missing:
        raise ValueError(f"joint_scales lacks {sorted(missing)}: give one scale per modality")
    out = {}
    for m in MODALITIES:
        s = joint_scales[m]
        out[m] = float(s) if isinstance(s, (int, float)) else [float(x) for x in s]
        if isinstance(out[m], list) and not out[m]:
            raise ValueError(f"joint_scales[{m!r}] is an empty list: give >= 1 value")
    return out


class JointGuidance(nn.Module):
    """A joint noise model: base noise plus the scaled discriminator residual (habit 2).

    Composed by the caller and handed to the sampler like the bare bases::

        sampler = JointSampler(JointGuidance(bases, D, joint_scales={"audio": 1.0, "video": 8.0}))

    ``bases`` is any joint noise model (independent bases or a joint base); the residual is
    added to every modality's noise. ``joint_scales``: a float (every modality) or per modality
    a float or a list over equal-width buckets of t (``mmdisco.calibration``); all 0 gives the
    bases' noise exactly (D is not run).
    """

    def __init__(
        self,
        bases,
        discriminator: nn.Module,
        joint_scales: float | Mapping[str, float | Sequence[float]] = 1.0,
        discriminator_cfg: bool = True,
    ):
        super().__init__()
        self.bases = bases
        self.discriminator = discriminator
        self.joint_scales = check_joint_scales(joint_scales)
        self.discriminator_cfg = discriminator_cfg

    @property
    def names(self) -> tuple[str, ...]:
        return self.bases.names

    @property
    def schedules(self) -> dict[str, NoiseSchedule]:
        return self.bases.schedules

    def sample_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return self.bases.sample_shapes(batch_size)

    def residuals(self, xs, t, conds=None) -> dict[str, Tensor]:
        """Residuals for sampling, with D's classifier-free guidance where the condition asks."""
        cond_c = discriminator_condition(conds)
        scales = {m: (conds or {}).get(m) for m in MODALITIES}
        scales = {m: (c.guidance_scale if c is not None else 1.0) for m, c in scales.items()}
        use_cfg = (
            self.discriminator_cfg
            and cond_c is not None
            and all(conds[m].pooled_uncond is not None for m in cond_c)
            and any(scales[m] != 1.0 for m in MODALITIES)
        )
        if not use_cfg:
            return residual(self.discriminator, xs, t, self.schedules, cond_c)[0]
        cond_u = discriminator_condition(conds, uncond=True)
        b = t.shape[0]
        both = {m: torch.cat([x, x]) for m, x in xs.items()}
        d_cond = {m: torch.cat([cond_u[m].expand(b, -1), cond_c[m].expand(b, -1)]) for m in cond_c}
        res, _ = residual(self.discriminator, both, torch.cat([t, t]), self.schedules, d_cond)
        out = {}
        for m, r in res.items():
            r_u, r_c = r.chunk(2)
            out[m] = r_u + scales[m] * (r_c - r_u)
        return out

    def predict_noise(self, xs, t, conds=None) -> dict[str, Tensor]:
        eps = self.bases.predict_noise(xs, t, conds)
        flat = [s for v in self.joint_scales.values() for s in (v if isinstance(v, list) else [v])]
        if all(s == 0.0 for s in flat):
            return eps
        res = self.residuals(xs, t, conds)
        out = {}
        for m in eps:
            s = scale_at(self.joint_scales[m], t, self.schedules[m].num_train_timesteps)
            s = s if isinstance(s, float) else expand_as(s.to(res[m].dtype), res[m])
            out[m] = eps[m] + s * res[m]
        return out
