"""JointLoss: L = L_D + lambda * L_DSM (paper Eq. 9-10, 13-16).

- L_D: binary cross-entropy on D's logit, real pairs = 1, fake pairs = 0 (each a batch mean).
- L_DSM: on real pairs, || eps_m(m_t, t) + r_m - noise_m ||^2 (mean over elements, summed over
  modalities), where r_m is D's residual noise (a double backward: d/dtheta of d logit / d m_t).

One t is drawn per pair and shared by its modalities; the noises are independent.
Base predictions are computed without gradient (the bases are frozen black boxes).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.bases.protocol import Condition, tree_select
from mmdisco.guidance import MODALITIES, discriminator_condition, residual


def _randn_like(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def drop_conditions(conds, p: float, batch: int, generator=None):
    """Replace each sample's condition by the unconditional one with probability p (CFG
    training); the same samples are dropped for every modality and for D."""
    if not conds or p <= 0:
        return conds
    dev = next(c.pooled for c in conds.values() if c is not None and c.pooled is not None).device
    keep = torch.rand(batch, generator=generator, device="cpu") >= p
    keep = keep.to(dev)
    out = {}
    for m, c in conds.items():
        if c is None or c.uncond is None:
            out[m] = c
            continue
        out[m] = Condition(
            cond=tree_select(c.cond, keep, c.uncond),
            pooled=None if c.pooled is None else tree_select(c.pooled, keep, c.pooled_uncond),
        )
    return out


class JointLoss:
    """Discriminator objective; ``__call__`` returns its terms separately (habit 4).

    Args:
        bce: include L_D (False: the "L_DSM only" ablation).
        lambda_dsm: weight of L_DSM (0: the "L_D only" ablation).
        cond_dropout: probability of replacing a prompt by the empty one (text-conditional D).
    """

    def __init__(self, bce: bool = True, lambda_dsm: float = 1.0, cond_dropout: float = 0.1):
        if not bce and lambda_dsm == 0:
            raise ValueError("JointLoss with bce=false and lambda_dsm=0 trains nothing: enable one")
        if lambda_dsm < 0:
            raise ValueError(f"lambda_dsm must be >= 0, got {lambda_dsm}")
        if not 0 <= cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.bce, self.lambda_dsm, self.cond_dropout = bool(bce), float(lambda_dsm), cond_dropout

    def noised(self, bases, pairs: Mapping[str, Tensor], t: Tensor, generator=None):
        noise = {m: _randn_like(pairs[m], generator) for m in MODALITIES}
        xt = {m: bases.schedules[m].add_noise(pairs[m], noise[m], t) for m in MODALITIES}
        return xt, noise

    def __call__(
        self,
        discriminator: nn.Module,
        bases,
        real: Mapping[str, Tensor],
        fake: Mapping[str, Tensor],
        real_conds: Mapping[str, Condition | None] | None = None,
        fake_conds: Mapping[str, Condition | None] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        b_real, b_fake = real["audio"].shape[0], fake["audio"].shape[0]
        num_t = bases.schedules["audio"].num_train_timesteps
        dev = real["audio"].device
        t = torch.randint(0, num_t, (b_real + b_fake,), generator=generator, device="cpu").to(dev)
        t_real, t_fake = t[:b_real], t[b_real:]
        real_conds = drop_conditions(real_conds, self.cond_dropout, b_real, generator)
        fake_conds = drop_conditions(fake_conds, self.cond_dropout, b_fake, generator)

        xt_real, noise_real = self.noised(bases, real, t_real, generator)
        xt_fake, _ = self.noised(bases, fake, t_fake, generator)
        terms: dict[str, Tensor] = {}
        need_dsm = self.lambda_dsm > 0
        d_cond_real = discriminator_condition(real_conds)
        if need_dsm:  # the residual must stay differentiable w.r.t. D (double backward)
            for x in xt_real.values():
                x.requires_grad_(True)
            res, logit_real = residual(
                discriminator, xt_real, t_real, bases.schedules, d_cond_real, create_graph=True
            )
        else:
            logit_real = discriminator(xt_real["audio"], xt_real["video"], t_real, d_cond_real)
        logit_fake = discriminator(
            xt_fake["audio"], xt_fake["video"], t_fake, discriminator_condition(fake_conds)
        )

        terms["l_d"] = F.binary_cross_entropy_with_logits(
            logit_real, torch.ones_like(logit_real)
        ) + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
        if need_dsm:
            with torch.no_grad():
                eps = bases.predict_noise(xt_real, t_real, real_conds)
            terms["l_dsm"] = sum(
                ((eps[m] + res[m] - noise_real[m]) ** 2).mean() for m in MODALITIES
            )
        else:
            terms["l_dsm"] = torch.zeros((), device=dev)
        terms["loss"] = (terms["l_d"] if self.bce else 0.0) + self.lambda_dsm * terms["l_dsm"]
        terms["acc_real"] = (logit_real.detach() > 0).float().mean()
        terms["acc_fake"] = (logit_fake.detach() < 0).float().mean()
        terms["t"], terms["logit_real"], terms["logit_fake"] = (
            t,
            logit_real.detach(),
            logit_fake.detach(),
        )
        return terms
