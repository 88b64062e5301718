"""JointLoss: L = L_D + lambda * L_DSM (paper Eq. 9-10, 13-16).

- L_D: binary cross-entropy on D's logit, real pairs = 1, fake pairs = 0 (each a batch mean).
- L_DSM: on real pairs, || eps_m(m_t, t) + r_m - noise_m ||^2 summed over modalities, where r_m
  is D's residual noise (a double backward: d/dtheta of d logit / d m_t). ``dsm_reduction``
  says what lambda = 1 means: "mean" averages over the elements of each modality (so L_DSM is
  about 1 / N_m of the paper's squared norm per pair, N_m = 4096-65536 elements), "sum" takes
  the squared L2 norm of each pair (the paper's ||.||^2) and averages over pairs.
- Negatives (beyond the paper; its A.10.2 names temporal alignment as the open problem):
  ``negatives={mismatch: f1, shift: f2}`` replaces those fractions of the fake batch by pairs
  made from the real batch: the audio of one real clip with the video of another
  (``mismatch``), or a real pair whose video is shifted in time by 1..``max_shift`` latent
  frames (``shift``). They carry the real marginals, so D can only tell them by how the
  modalities agree, which is exactly what guidance should enforce.
- Contrastive term (beyond the paper): ``contrastive={weight: w, group: G}`` draws one t per
  group of G real pairs and scores every (audio i, video j) of a group with D (the streams run
  once per clip, the head per pair); a symmetric cross-entropy asks each audio to pick its own
  video among the group's and each video its audio (InfoNCE). Its minimiser includes the log
  density ratio that L_D's is, so the two agree at the optimum; what it adds is gradient: the
  softmax puts it on the mismatched pairs D currently scores highest, e.g. clips that agree in
  time but not in content, which independent fakes rarely are (1/8 of them in the synthetic
  world) and L_D's batch mean weighs no more than the easy ones.
  ``pair_bce: b`` adds b times the balanced BCE over the same G x G logits (the G true pairs
  labelled 1, the G (G - 1) others 0, each a mean): L_D with the group's mismatched real pairs
  as fakes. InfoNCE leaves D's offsets c(a) + c(v) free (each softmax ignores one of them) and
  guidance differentiates them: a class whose offset drifts up is favoured by exp(s c) at
  scale s (README, "Guidance that aligns": guided pairs herded into one or two classes). The
  BCE's minimiser is the log ratio itself, log q(a, v) / (q(a) q(v)), whose E_v[exp] is 1 for
  every a: it pins the offsets.

One t is drawn per pair and shared by its modalities; the noises are independent.
Base predictions are computed without gradient (the bases are frozen black boxes).
All randomness of one evaluation is a :class:`Draws`; drawing it for a whole global batch and
slicing it per process makes several processes see exactly the draws of one.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.bases.protocol import MODALITIES, Condition, tree_select
from mmdisco.guidance import discriminator_condition, residual


def apply_keep(conds, keep: Tensor | None):
    """Replace the condition of every sample where ``keep`` is False by the unconditional one
    (CFG training); the same samples are dropped for every modality and for D. The result has
    no classifier-free guidance (scale 1): L_DSM's target is the plain conditional prediction."""
    if not conds:
        return conds
    out = {}
    for m, c in conds.items():
        if c is None or c.uncond is None or keep is None:
            out[m] = None if c is None else c.with_scale(1.0)
            continue
        dev = c.pooled.device if c.pooled is not None else keep.device
        k = keep.to(dev)
        out[m] = Condition(
            cond=tree_select(c.cond, k, c.uncond),
            pooled=None if c.pooled is None else tree_select(c.pooled, k, c.pooled_uncond),
        )
    return out


@dataclass
class Draws:
    """The randomness of one loss evaluation: a step t per pair, the noise of every modality of
    real and fake pairs, and which prompts are kept (None: no prompt dropout)."""

    t_real: Tensor  # (B_real,)
    t_fake: Tensor  # (B_fake,)
    noise_real: dict[str, Tensor]  # {m: (B_real, ...)}
    noise_fake: dict[str, Tensor]  # {m: (B_fake, ...)}
    keep_real: Tensor | None = None  # (B_real,) bool
    keep_fake: Tensor | None = None  # (B_fake,) bool
    shifts: Tensor | None = None  # (B_fake,) frames each shift negative's video moves

    def slice(self, start: int, stop: int) -> Draws:
        """Samples [start, stop) of real and of fake pairs (one process's share)."""

        def cut(x):
            return None if x is None else x[start:stop]

        return Draws(
            cut(self.t_real),
            cut(self.t_fake),
            {m: cut(x) for m, x in self.noise_real.items()},
            {m: cut(x) for m, x in self.noise_fake.items()},
            cut(self.keep_real),
            cut(self.keep_fake),
            cut(self.shifts),
        )

    def to(self, device) -> Draws:
        def move(x):
            return None if x is None else x.to(device)

        return Draws(
            move(self.t_real),
            move(self.t_fake),
            {m: move(x) for m, x in self.noise_real.items()},
            {m: move(x) for m, x in self.noise_fake.items()},
            move(self.keep_real),
            move(self.keep_fake),
            move(self.shifts),
        )


DSM_REDUCTIONS = ("mean", "sum")
DSM_WEIGHTINGS = ("eps", "x0")
NEGATIVE_KINDS = ("mismatch", "shift")


def check_negatives(negatives: Mapping[str, float] | None) -> dict[str, float]:
    """``{mismatch: f, shift: f, max_shift: k}`` with f >= 0, sum of fractions <= 1, k >= 1."""
    neg = dict(negatives or {})
    unknown = set(neg) - {*NEGATIVE_KINDS, "max_shift"}
    if unknown:
        raise ValueError(
            f"loss.negatives has unknown keys {sorted(unknown)}: use {NEGATIVE_KINDS} + max_shift"
        )
    out = {k: float(neg.get(k) or 0.0) for k in NEGATIVE_KINDS}
    out["max_shift"] = int(neg.get("max_shift") or 2)
    if any(v < 0 for v in out.values()) or sum(out[k] for k in NEGATIVE_KINDS) > 1:
        raise ValueError(
            f"loss.negatives fractions must be >= 0 and sum to <= 1 (of the fake batch), got {neg}"
        )
    if out["max_shift"] < 1:
        raise ValueError(f"loss.negatives.max_shift must be >= 1 frame, got {out['max_shift']}")
    return out


def check_contrastive(contrastive: Mapping[str, float] | None) -> dict[str, float]:
    """``{"weight": w >= 0, "group": G >= 2, "pair_bce": b >= 0}`` (None or both weights 0:
    off)."""
    c = dict(contrastive or {})
    unknown = set(c) - {"weight", "group", "pair_bce"}
    if unknown:
        raise ValueError(
            f"loss.contrastive has unknown keys {sorted(unknown)}: use weight, group, pair_bce"
        )
    out = {"weight": float(c.get("weight", 0.0)), "group": int(c.get("group", 8)),
           "pair_bce": float(c.get("pair_bce") or 0.0)}  # fmt: skip
    for k in ("weight", "pair_bce"):
        if out[k] < 0:
            raise ValueError(f"loss.contrastive.{k} must be >= 0, got {out[k]}")
    if out["group"] < 2:
        raise ValueError(f"loss.contrastive.group must be >= 2 pairs, got {out['group']}")
    return out


def contrastive_on(contrastive: Mapping[str, float] | None) -> bool:
    """Whether a (checked) ``loss.contrastive`` scores the G x G pairs of the real groups."""
    return bool(contrastive) and (contrastive["weight"] > 0 or contrastive["pair_bce"] > 0)


@functools.cache
def scores_index_pairs(cls: type) -> bool:
    """Whether ``cls.forward`` takes ``pairs`` (checked once per class, not every step)."""
    return "pairs" in inspect.signature(cls.forward).parameters


def group_pairs(num: int, group: int, device=None) -> tuple[Tensor, Tensor]:
    """Index tensors (ia, iv), each (num * group,): every (i, j) with i, j in the same group of
    ``group`` consecutive pairs, row-major (audio i, then video j)."""
    g = torch.arange(num // group, device=device)[:, None, None] * group
    i = torch.arange(group, device=device)
    ia = (g + i[None, :, None]).expand(-1, group, group).reshape(-1)
    iv = (g + i[None, None, :]).expand(-1, group, group).reshape(-1)
    return ia, iv


def shift_time(x: Tensor, shifts: Tensor, axis: int) -> Tensor:
    """Shift each sample of x along ``axis`` by ``shifts[i]`` steps (positive: later), filling
    with the edge step (a held first / last frame), not wrapping around."""
    n = x.shape[axis]
    pos = torch.arange(n, device=x.device)
    src = (pos[None, :] - shifts.to(x.device)[:, None]).clamp(0, n - 1)  # (B, n)
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    shape[axis] = n
    index = src.reshape(shape).expand_as(x)
    return torch.gather(x, axis, index)


def make_negatives(real, fake, counts, shifts, time_axes):
    """The fake batch with its first ``counts["mismatch"]`` pairs replaced by real audio with
    the video of the next real pair (a cyclic derangement), and the following
    ``counts["shift"]`` by real pairs whose video is shifted by ``shifts`` frames."""
    n_mis, n_shift = counts["mismatch"], counts["shift"]
    if n_mis + n_shift == 0:
        return fake
    b_real = real["audio"].shape[0]
    out = {m: fake[m].clone() for m in MODALITIES}
    if n_mis:
        idx = torch.arange(n_mis, device=real["audio"].device) % b_real
        out["audio"][:n_mis] = real["audio"][idx]
        out["video"][:n_mis] = real["video"][(idx + 1) % b_real]
    if n_shift:
        idx = torch.arange(n_shift, device=real["audio"].device) % b_real
        sl = slice(n_mis, n_mis + n_shift)
        out["audio"][sl] = real["audio"][idx]
        out["video"][sl] = shift_time(real["video"][idx], shifts, time_axes["video"])
    return out


class JointLoss:
    """Discriminator objective; ``__call__`` returns its terms separately (habit 4).

    Args:
        bce: include L_D (False: the "L_DSM only" ablation).
        lambda_dsm: weight of L_DSM (0: the "L_D only" ablation).
        cond_dropout: probability of replacing a prompt by the empty one (text-conditional D).
        t_power: t = floor(T u^p) with u ~ U[0, 1): 1 is the paper's uniform t; p > 1 spends
            more of the batch on low-noise steps, where real and fake pairs differ most.
        dsm_weighting: "eps" (the paper's: the error in noise space, as it is) or "x0": each
            pair's error times sigma_m(t)^2 / alpha_m(t)^2, capped at ``dsm_weight_max``, i.e.
            the error of the x0 the joint noise implies; it moves L_DSM's weight from low t,
            where an x0-predicting base's eps error (alpha / sigma times its x0 error) dominates
            and no joint correction helps, to the high t where the modalities settle together.
        dsm_weight_max: the cap of the "x0" weight (its value is 1 where alpha = sigma).
        dsm_reduction: "mean" (per element, per modality) or "sum" (squared L2 norm per pair,
            the paper's); see the module docstring.
        negatives: ``{"mismatch": f1, "shift": f2, "max_shift": k}``: fractions of the fake
            batch replaced by mismatched / time-shifted real pairs (default: none, the paper's).
        contrastive: ``{"weight": w, "group": G}``: add w times the symmetric InfoNCE over the
            G x G (audio, video) pairs of each group of G real pairs, which share one t
            (default: none, the paper's). Needs an unconditional D whose forward takes
            ``pairs`` (``TwoStreamDiscriminator``) and a per-process batch divisible by G.
        residual_fp32: compute D's forward on real pairs and its input gradient r_m in float32
            with autocast disabled, even inside a mixed-precision (autocast) region; the base
            predictions and D's forward on fake pairs still follow the surrounding autocast.
    """

    def __init__(
        self,
        bce: bool = True,
        lambda_dsm: float = 1.0,
        cond_dropout: float = 0.1,
        residual_fp32: bool = True,
        t_power: float = 1.0,
        dsm_reduction: str = "mean",
        negatives: Mapping[str, float] | None = None,
        dsm_weighting: str = "eps",
        dsm_weight_max: float = 100.0,
        contrastive: Mapping[str, float] | None = None,
    ):
        if dsm_weighting not in DSM_WEIGHTINGS:
            raise ValueError(
                f"dsm_weighting must be one of {DSM_WEIGHTINGS}, got {dsm_weighting!r}"
            )
        if not dsm_weight_max > 0:
            raise ValueError(f"dsm_weight_max must be > 0, got {dsm_weight_max}")
        self.dsm_weighting, self.dsm_weight_max = dsm_weighting, float(dsm_weight_max)
        if dsm_reduction not in DSM_REDUCTIONS:
            raise ValueError(
                f"dsm_reduction must be one of {DSM_REDUCTIONS}, got {dsm_reduction!r}"
            )
        self.negatives = check_negatives(negatives)
        self.contrastive = check_contrastive(contrastive)
        if t_power <= 0:
            raise ValueError(f"t_power must be > 0 (1: uniform t, the paper's), got {t_power}")
        if not bce and lambda_dsm == 0 and not contrastive_on(self.contrastive):
            raise ValueError(
                "JointLoss with bce=false, lambda_dsm=0 and no contrastive term trains nothing: "
                "enable one"
            )
        if lambda_dsm < 0:
            raise ValueError(f"lambda_dsm must be >= 0, got {lambda_dsm}")
        if not 0 <= cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.bce, self.lambda_dsm, self.cond_dropout = bool(bce), float(lambda_dsm), cond_dropout
        self.residual_fp32 = bool(residual_fp32)
        self.t_power = float(t_power)
        self.dsm_reduction = dsm_reduction

    def draw(
        self,
        num_train_timesteps: int,
        real_shapes: Mapping[str, tuple[int, ...]],
        fake_shapes: Mapping[str, tuple[int, ...]],
        conditional: bool = False,
        generator: torch.Generator | None = None,
        device=None,
    ) -> Draws:
        """The randomness of one evaluation for pairs of the given shapes ``{m: (B, ...)}``,
        drawn on ``device`` (default: the generator's): t, prompt-keep masks, then noises."""
        if device is None:
            device = generator.device if generator is not None else "cpu"
        b_real, b_fake = real_shapes["audio"][0], fake_shapes["audio"][0]
        t = self.draw_t(b_real + b_fake, num_train_timesteps, generator, device)
        if contrastive_on(self.contrastive):  # one t per group of G real pairs (its first one's)
            g = self.contrastive["group"]
            first = torch.arange(b_real, device=t.device) // g * g
            t = torch.cat([t[:b_real][first], t[b_real:]])
        keep_real = keep_fake = None
        if conditional and self.cond_dropout > 0:
            keep_real = torch.rand(b_real, generator=generator, device=device) >= self.cond_dropout
            keep_fake = torch.rand(b_fake, generator=generator, device=device) >= self.cond_dropout

        def noise(shapes):
            return {
                m: torch.randn(shapes[m], generator=generator, device=device) for m in MODALITIES
            }

        noise_real = noise(real_shapes)
        noise_fake = noise(fake_shapes)
        shifts = None
        if self.negatives["shift"] > 0:  # +-1..max_shift frames, drawn last (no other draw moves)
            k = self.negatives["max_shift"]
            mag = torch.randint(1, k + 1, (b_fake,), generator=generator, device=device)
            sign = torch.randint(0, 2, (b_fake,), generator=generator, device=device) * 2 - 1
            shifts = mag * sign
        return Draws(t[:b_real], t[b_real:], noise_real, noise_fake, keep_real, keep_fake, shifts)

    def draw_t(self, n: int, num_train_timesteps: int, generator=None, device="cpu") -> Tensor:
        """n steps t in [0, T) from ``loss.t_power``'s law (the t of :meth:`draw`)."""
        if self.t_power == 1.0:  # uniform over [0, T), the paper's
            return torch.randint(0, num_train_timesteps, (n,), generator=generator, device=device)
        # t = floor(T u^p): density ~ t^(1/p - 1), more low-noise steps for p > 1
        u = torch.rand(n, generator=generator, device=device)
        return (num_train_timesteps * u**self.t_power).long().clamp(max=num_train_timesteps - 1)

    def negative_counts(self, b_fake: int) -> dict[str, int]:
        """How many of a (local) fake batch of ``b_fake`` pairs each kind of negative replaces."""
        n_mis = round(self.negatives["mismatch"] * b_fake)
        n_shift = min(round(self.negatives["shift"] * b_fake), b_fake - n_mis)
        return {"mismatch": n_mis, "shift": n_shift}

    def dsm_term(self, err: Tensor, weight: Tensor | None = None) -> Tensor:
        """One modality's L_DSM from the per-element error (B, ...) and an optional per-pair
        weight (B,): see ``dsm_reduction`` and ``dsm_weighting``."""
        sq = err**2
        if weight is None:  # the paper's (the same float sums as before the weighting existed)
            return sq.mean() if self.dsm_reduction == "mean" else sq.flatten(1).sum(1).mean()
        per_pair = sq.flatten(1).mean(1) if self.dsm_reduction == "mean" else sq.flatten(1).sum(1)
        return (per_pair * weight).mean()

    def dsm_weights(self, schedules, t: Tensor) -> dict[str, Tensor | None]:
        """Per-pair weights of each modality's L_DSM term (None: unweighted, the paper's)."""
        if self.dsm_weighting == "eps":
            return dict.fromkeys(MODALITIES)
        out = {}
        for m in MODALITIES:
            alpha, sigma = (c.to(t.device).float() for c in schedules[m].coefficients(t))
            out[m] = (sigma**2 / alpha**2).clamp(max=self.dsm_weight_max)  # (B,)
        return out

    def noised(self, bases, pairs: Mapping[str, Tensor], t: Tensor, noise: Mapping[str, Tensor]):
        return {m: bases.schedules[m].add_noise(pairs[m], noise[m], t) for m in MODALITIES}

    def __call__(
        self,
        discriminator: nn.Module,
        bases,
        real: Mapping[str, Tensor],
        fake: Mapping[str, Tensor],
        real_conds: Mapping[str, Condition | None] | None = None,
        fake_conds: Mapping[str, Condition | None] | None = None,
        generator: torch.Generator | None = None,
        draws: Draws | None = None,
        base_eps: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Terms: ``loss``, ``l_d``, ``l_dsm``, ``acc_real``, ``acc_fake`` (scalars); ``t_real``,
        ``t_fake``, ``logit_real``, ``logit_fake`` and, with L_DSM, the per-pair L2 norms
        ``res_norm_{m}`` of r_m and ``eps_norm_{m}`` of the base noise eps_m (all detached).

        The randomness comes from ``draws`` when given, else it is drawn with ``generator``.
        ``base_eps``: the bases' noise prediction on the noised real pairs of ``draws``
        (``{m: (B_real, ...)}``, precomputed: ``train.dsm_draws``, ``mmdisco.pairs.dsm``);
        given, the bases are not run (only their schedules are used).
        """
        dev = real["audio"].device
        if draws is None:
            draws = self._draw_for(bases, real, fake, real_conds, fake_conds, generator)
        draws = draws.to(dev)
        t_real, t_fake = draws.t_real, draws.t_fake
        real_conds = apply_keep(real_conds, draws.keep_real)
        fake_conds = apply_keep(fake_conds, draws.keep_fake)

        counts = self.negative_counts(fake["audio"].shape[0])
        if counts["mismatch"] + counts["shift"]:
            shifts = None
            if counts["shift"]:
                shifts = draws.shifts[counts["mismatch"] : counts["mismatch"] + counts["shift"]]
            fake = make_negatives(real, fake, counts, shifts, bases.time_axes)
        xt_real = self.noised(bases, real, t_real, draws.noise_real)
        xt_fake = self.noised(bases, fake, t_fake, draws.noise_fake)
        logit_real, res = self.real_logit(discriminator, bases, xt_real, t_real, real_conds)
        logit_fake = discriminator(
            xt_fake["audio"], xt_fake["video"], t_fake, discriminator_condition(fake_conds)
        )
        logit_real, logit_fake = logit_real.float(), logit_fake.float()

        terms: dict[str, Tensor] = {"l_d": self.l_d(logit_real, logit_fake)}
        if res is not None:
            if base_eps is None:
                eps = self.base_noise(bases, xt_real, t_real, real_conds)
            else:
                eps = {m: base_eps[m].to(dev).float() for m in MODALITIES}
            weights = self.dsm_weights(bases.schedules, t_real)
            terms["l_dsm"] = self.l_dsm(eps, res, draws.noise_real, weights)
            terms.update(residual_diagnostics(res, eps))
        else:
            terms["l_dsm"] = torch.zeros((), device=dev)
        terms["loss"] = (terms["l_d"] if self.bce else 0.0) + self.lambda_dsm * terms["l_dsm"]
        if contrastive_on(self.contrastive):
            if discriminator_condition(real_conds) is not None:
                raise ValueError(
                    "loss.contrastive pairs one clip's audio with another's video, which a "
                    "text-conditional D cannot score without a prompt for the pair: use it with "
                    "an unconditional discriminator (or set loss.contrastive=null)"
                )
            terms["l_nce"], terms["acc_nce"], terms["l_pbce"] = self.l_nce(
                discriminator, xt_real, t_real
            )
            c = self.contrastive
            terms["loss"] = terms["loss"] + c["weight"] * terms["l_nce"]
            terms["loss"] = terms["loss"] + c["pair_bce"] * terms["l_pbce"]
        terms["acc_real"] = (logit_real.detach() > 0).float().mean()
        terms["acc_fake"] = (logit_fake.detach() < 0).float().mean()
        terms["t_real"], terms["t_fake"] = t_real, t_fake
        terms["logit_real"], terms["logit_fake"] = logit_real.detach(), logit_fake.detach()
        return terms

    # -- the pieces of one evaluation ---------------------------------------------------------
    def _draw_for(self, bases, real, fake, real_conds, fake_conds, generator) -> Draws:
        """Draws for these pairs' shapes from ``generator`` (on the CPU)."""
        shapes = [{m: tuple(x[m].shape) for m in MODALITIES} for x in (real, fake)]
        return self.draw(
            bases.schedules["audio"].num_train_timesteps,
            *shapes,
            conditional=bool(real_conds or fake_conds),
            generator=generator,
            device="cpu",
        )

    def real_logit(self, discriminator, bases, xt_real, t_real, real_conds):
        """D's logit on the noised real pairs and, with L_DSM, the residuals r_m kept
        differentiable w.r.t. D's parameters (a double backward); (logit, None) without."""
        d_cond = discriminator_condition(real_conds)
        if self.lambda_dsm <= 0:
            return discriminator(xt_real["audio"], xt_real["video"], t_real, d_cond), None
        for x in xt_real.values():
            x.requires_grad_(True)
        res, logit = residual(
            discriminator,
            xt_real,
            t_real,
            bases.schedules,
            d_cond,
            create_graph=True,
            fp32=self.residual_fp32,
        )
        return logit, res

    def l_nce(self, discriminator, xt_real, t_real) -> tuple[Tensor, Tensor, Tensor]:
        """Over each group's G x G (audio i, video j) logits: the symmetric InfoNCE, the fraction
        of rows and columns whose largest logit is the true pair, and the balanced pairwise BCE
        (the G true pairs labelled 1, the G (G - 1) others 0, each a mean)."""
        g, b = self.contrastive["group"], t_real.shape[0]
        if b % g or (t_real.view(-1, g) != t_real.view(-1, g)[:, :1]).any():
            raise ValueError(
                f"loss.contrastive.group ({g}) must divide each process's real batch ({b}) "
                f"so that a group shares one t: set train.batch_size / processes to a multiple"
            )
        ia, iv = group_pairs(b, g, t_real.device)
        xa, xv = xt_real["audio"].detach(), xt_real["video"].detach()
        module = getattr(discriminator, "module", discriminator)  # DDP wraps the real one
        if not scores_index_pairs(type(module)):
            raise TypeError(
                f"loss.contrastive needs a discriminator whose forward scores index pairs, "
                f"forward(audio, video, t, cond, pairs=(ia, iv)) as TwoStreamDiscriminator's; "
                f"{type(module).__name__} has none (or set loss.contrastive=null)"
            )
        logits = discriminator(xa, xv, t_real, None, pairs=(ia, iv))
        logits = logits.float().view(b // g, g, g)  # [group, audio i, video j]
        target = torch.arange(g, device=logits.device).expand(b // g, g)
        rows = F.cross_entropy(logits.flatten(0, 1), target.reshape(-1))
        cols = F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target.reshape(-1))
        hits = (logits.argmax(2) == target).float().mean()  # audio picks its video
        hits = hits + (logits.argmax(1) == target).float().mean()  # video picks its audio
        eye = torch.eye(g, dtype=torch.bool, device=logits.device).expand_as(logits)
        pos, neg = logits[eye], logits[~eye]
        pbce = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
        pbce = pbce + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
        return (rows + cols) / 2, hits.detach() / 2, pbce

    @staticmethod
    def l_d(logit_real: Tensor, logit_fake: Tensor) -> Tensor:
        """L_D (Eq. 9): BCE with real pairs labelled 1 and fake pairs 0, each a batch mean."""
        return F.binary_cross_entropy_with_logits(
            logit_real, torch.ones_like(logit_real)
        ) + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))

    @staticmethod
    @torch.no_grad()
    def base_noise(bases, xt_real, t_real, real_conds) -> dict[str, Tensor]:
        """The frozen bases' eps_m(m_t, t) on the real pairs (float32, no gradient)."""
        xs = {m: x.detach() for m, x in xt_real.items()}
        return {m: e.float() for m, e in bases.predict_noise(xs, t_real, real_conds).items()}

    def l_dsm(self, eps, res, noise, weights=None) -> Tensor:
        """L_DSM (Eq. 10): ||eps_m + r_m - noise_m||^2 summed over m, each reduced as
        ``dsm_reduction`` says (a mean over elements, or the per-pair squared norm) and
        weighted per pair as ``dsm_weighting`` says (``weights``: from :meth:`dsm_weights`)."""
        weights = weights or dict.fromkeys(MODALITIES)
        return sum(
            self.dsm_term(eps[m] + res[m].float() - noise[m], weights[m]) for m in MODALITIES
        )


def residual_diagnostics(res: dict[str, Tensor], eps: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-pair L2 norms of the residual r_m and of the base noise eps_m (detached), logged
    beside the loss: their ratio is how strongly D corrects the bases at joint scale 1."""
    out = {}
    for m in MODALITIES:
        out[f"res_norm_{m}"] = res[m].detach().float().flatten(1).norm(dim=1)
        out[f"eps_norm_{m}"] = eps[m].flatten(1).norm(dim=1)
    return out
