"""What the rest of the library may ask of a base model (habit 1: a small protocol).

Two levels, both declared here, so no caller probes a base by duck typing:

- :class:`JointNoiseModel`, what the sampler, the loss and the guidance consume: ``names``
  (the modalities, a subset of :data:`MODALITIES`), ``schedules`` (one
  :class:`~mmdisco.schedule.NoiseSchedule` per modality), ``sample_shapes(batch_size)`` and
  ``predict_noise(xs, t, conds)`` on dicts keyed by modality. The bare bases, a joint base and
  :class:`~mmdisco.guidance.JointGuidance` (bases + discriminator) all are one.
- :class:`JointBase`, what the pair store, training and the scripts need besides: whether it
  is text-conditional (``conditional_names``, ``encode_prompt(prompts) -> {m: Condition |
  None}``), whether it decodes to media (``decodes_to_media``, ``sample_rate``, ``fps``,
  ``media_format()``), the codec on dicts (``encode(media)``, ``decode(latents)``: the identity
  for data-space bases such as the toy), and ``cache_key()`` (what names its weights in a cache).

A *single-modality* base (AudioLDM, VideoCrafter2, the toy MLP, ...) subclasses
:class:`DiffusionBase`: it implements ``model_output(x_t, t, emb)`` (the raw network output,
whatever it predicts; :meth:`DiffusionBase.predict_noise` batches classifier-free guidance into
one forward and converts eps / x0 / v / flow-velocity outputs to eps), ``sample_shape`` and its
codec, and declares ``text_conditional`` / ``decodes_to_media`` / ``sample_rate`` / ``fps``.
:class:`IndependentBases` joins single-modality bases into a :class:`JointBase`.

A *joint base* (one network for both modalities, e.g. MM-Diffusion) fits the same way without
IndependentBases: subclass ``nn.Module`` and implement the :class:`JointBase` members directly
-- ``names = MODALITIES``, ``schedules`` (its VP schedule for both), ``sample_shapes``,
``predict_noise`` running its one coupled forward on ``xs["audio"], xs["video"]`` and returning
both noises, ``encode`` / ``decode`` on the pair's dicts (MM-Diffusion: the identity on
waveform and pixels), ``conditional_names = ()`` with ``encode_prompt`` returning
``{m: None}``, ``cache_key``. Nothing else in the library indexes a base by modality, so
``JointSampler``, ``JointGuidance`` (the residual is added to both noises), ``JointLoss``, the
pair store and ``train.py`` take it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mmdisco.hashing import weights_fingerprint
from mmdisco.schedule import NoiseSchedule, expand_as

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")
MODALITIES = ("audio", "video")  # the modality names of a pair, in the order D takes them


# -- conditions ----------------------------------------------------------------------------
def tree_cat(items: list[Any]) -> Any:
    """Concatenate tensors (or dicts / tuples of tensors) along the batch dimension."""
    first = items[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(items, dim=0)
    if isinstance(first, Mapping):
        return {k: tree_cat([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(tree_cat(list(z)) for z in zip(*items))
    raise TypeError(f"cannot batch condition of type {type(first).__name__}")


def tree_select(tree: Any, mask: Tensor, other: Any) -> Any:
    """Per sample: ``tree`` where mask is True, ``other`` elsewhere (prompt dropout)."""
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        return torch.where(expand_as(mask, tree).bool(), tree, other.expand_as(tree))
    if isinstance(tree, Mapping):
        return {k: tree_select(tree[k], mask, other[k]) for k in tree}
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_select(a, mask, b) for a, b in zip(tree, other))
    raise TypeError(f"cannot select condition of type {type(tree).__name__}")


@dataclass
class Condition:
    """A text (or other) condition for one modality, in the model's own embedding format.

    ``cond`` and ``uncond`` are batched like the samples (or have batch 1 and broadcast in
    ``predict_noise``); ``guidance_scale`` w gives eps_u + w * (eps_c - eps_u).
    ``pooled`` / ``pooled_uncond`` are the (B, D) mean-pooled embeddings the discriminator uses.
    """

    cond: Any
    uncond: Any = None
    guidance_scale: float = 1.0
    pooled: Tensor | None = None
    pooled_uncond: Tensor | None = None

    @property
    def uses_cfg(self) -> bool:
        return self.uncond is not None and self.guidance_scale != 1.0

    def with_scale(self, guidance_scale: float) -> Condition:
        return replace(self, guidance_scale=guidance_scale)


# -- single-modality bases -----------------------------------------------------------------
class DiffusionBase(nn.Module):
    """A frozen single-modality diffusion model seen as a noise predictor.

    Subclasses set ``self.schedule`` and ``self.prediction_type`` and implement
    :meth:`model_output`; codecs (:meth:`encode`, :meth:`decode`, :meth:`encode_prompt`) are
    optional and raise when the model has none.
    """

    schedule: NoiseSchedule
    prediction_type: str = "epsilon"
    text_conditional: bool = False  # encode_prompt gives a Condition (else it raises)
    decodes_to_media: bool = False  # decode gives a waveform (audio) / uint8 frames (video)
    sample_rate: int | None = None  # audio bases: rate of the waveform ``decode`` returns
    fps: float | None = None  # video bases: frame rate of the frames ``decode`` returns
    num_samples: int | None = None  # audio bases: waveform length they take, when fixed
    num_frames: int | None = None  # video bases: frames they take, when fixed
    height: int | None = None  # video bases: frame size they take, when fixed
    width: int | None = None
    time_axis: int = 2  # the latent's axis (batch first) that runs over time: video frames in
    # (B, C, F, H, W), STFT / mel frames in (B, C, T, F), samples in (B, 1, N)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def model_output(self, x_t: Tensor, t: Tensor, emb: Any) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Condition | None = None) -> Tensor:
        """eps(x_t, t, c), with classifier-free guidance batched into one forward."""
        t = _as_batch_steps(t, x_t)
        if cond is None or not cond.uses_cfg:
            emb = None if cond is None else _broadcast_batch(cond.cond, x_t.shape[0])
            out = self.model_output(x_t, t, emb)
            return self.to_eps(out, x_t, t)
        b = x_t.shape[0]
        emb = tree_cat([_broadcast_batch(cond.uncond, b), _broadcast_batch(cond.cond, b)])
        out = self.model_output(torch.cat([x_t, x_t]), torch.cat([t, t]), emb)
        eps_u, eps_c = self.to_eps(out, torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)
        return eps_u + cond.guidance_scale * (eps_c - eps_u)

    def to_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Convert the network output to eps, for any (alpha_t, sigma_t) schedule."""
        kind = self.prediction_type
        if kind == "epsilon":
            return out
        alpha, sigma = (expand_as(c.to(x_t.device), x_t) for c in self.schedule.coefficients(t))
        if kind == "sample":  # x_t = alpha x0 + sigma eps
            return (x_t - alpha * out) / sigma
        if kind == "v_prediction":  # v = alpha eps - sigma x0
            return (sigma * x_t + alpha * out) / (alpha**2 + sigma**2)
        if kind == "flow":  # u = eps - x0
            return (x_t + alpha * out) / (alpha + sigma)
        raise ValueError(f"prediction_type {kind!r} is not one of {PREDICTION_TYPES}")

    def encode(self, media: Any) -> Tensor:
        """Media (or data-space samples) -> the latents this base samples; default: identity
        (a data-space base, e.g. the toy)."""
        return torch.as_tensor(media)

    def decode(self, latents: Tensor) -> Any:
        """Latents -> media when ``decodes_to_media``; default: identity (data space)."""
        return latents

    def encode_prompt(self, prompts: list[str]) -> Condition:
        raise NotImplementedError(f"{type(self).__name__} is not text-conditional")


def _as_batch_steps(t: Tensor | int, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x.device, dtype=torch.long)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def _broadcast_batch(tree: Any, batch: int) -> Any:
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        return tree.expand(batch, *tree.shape[1:]) if tree.shape[0] == 1 else tree
    if isinstance(tree, Mapping):
        return {k: _broadcast_batch(v, batch) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_broadcast_batch(v, batch) for v in tree)
    return tree


# -- the joint view --------------------------------------------------------------------------
@runtime_checkable
class JointNoiseModel(Protocol):
    """What the sampler and the loss consume: per-modality schedules and noise predictions."""

    names: tuple[str, ...]
    schedules: dict[str, NoiseSchedule]

    def sample_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]: ...

    def predict_noise(
        self, xs: dict[str, Tensor], t: Tensor, conds: dict[str, Condition | None] | None = None
    ) -> dict[str, Tensor]: ...


@runtime_checkable
class JointBase(JointNoiseModel, Protocol):
    """A joint noise model with its codecs and capabilities: what the pair store, training and
    the scripts use (see the module docstring for how a joint network implements it)."""

    conditional_names: tuple[str, ...]  # modalities that take a prompt; () if none
    time_axes: dict[str, int]  # per modality, the latent axis that runs over time (negatives)
    decodes_to_media: bool
    sample_rate: int | None
    fps: float | None

    @property
    def device(self) -> torch.device: ...

    @property
    def text_conditional(self) -> bool: ...

    def media_format(self) -> dict[str, Any]: ...

    def encode(self, media: Mapping[str, Any]) -> dict[str, Tensor]: ...

    def decode(self, latents: Mapping[str, Tensor]) -> dict[str, Any]: ...

    def encode_prompt(self, prompts: list[str]) -> dict[str, Condition | None]: ...

    def cache_key(self) -> dict[str, Any]: ...


class IndependentBases(nn.Module):
    """Two (or more) single-modality bases side by side: the "no joint" model (a
    :class:`JointBase`).

    The same instance may serve several modalities (the paper's toy uses one 1-D model for
    both coordinates).
    """

    def __init__(self, **bases: DiffusionBase):
        super().__init__()
        if not bases:
            raise ValueError(
                "IndependentBases needs at least one modality, e.g. audio=..., video=..."
            )
        unknown = set(bases) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}: use {MODALITIES}")
        self.names = tuple(bases)
        self.bases = nn.ModuleDict(bases)

    @property
    def schedules(self) -> dict[str, NoiseSchedule]:
        return {m: self.bases[m].schedule for m in self.names}

    def __getitem__(self, name: str) -> DiffusionBase:
        return self.bases[name]

    @property
    def time_axes(self) -> dict[str, int]:
        return {m: self.bases[m].time_axis for m in self.names}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sample_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return {m: self.bases[m].sample_shape(batch_size) for m in self.names}

    # -- capabilities, declared by the single-modality bases ---------------------------------
    @property
    def conditional_names(self) -> tuple[str, ...]:
        return tuple(m for m in self.names if self.bases[m].text_conditional)

    @property
    def text_conditional(self) -> bool:
        return bool(self.conditional_names)

    @property
    def decodes_to_media(self) -> bool:
        return all(self.bases[m].decodes_to_media for m in self.names)

    @property
    def sample_rate(self) -> int | None:
        return self.bases["audio"].sample_rate if "audio" in self.names else None

    @property
    def fps(self) -> float | None:
        return self.bases["video"].fps if "video" in self.names else None

    def media_format(self) -> dict[str, Any]:
        """The clips the bases take (None where a base does not fix it): ``sample_rate``,
        ``num_samples``, ``fps``, ``num_frames``, ``height``, ``width``."""
        audio = self.bases["audio"] if "audio" in self.names else None
        video = self.bases["video"] if "video" in self.names else None
        return {
            "sample_rate": audio.sample_rate if audio is not None else None,
            "num_samples": audio.num_samples if audio is not None else None,
            "fps": video.fps if video is not None else None,
            "num_frames": video.num_frames if video is not None else None,
            "height": video.height if video is not None else None,
            "width": video.width if video is not None else None,
        }

    # -- codecs on dicts ------------------------------------------------------------------------
    def encode(self, media: Mapping[str, Any]) -> dict[str, Tensor]:
        return {m: self.bases[m].encode(media[m]) for m in self.names}

    def decode(self, latents: Mapping[str, Tensor]) -> dict[str, Any]:
        return {m: self.bases[m].decode(latents[m]) for m in self.names}

    def encode_prompt(self, prompts: list[str]) -> dict[str, Condition | None]:
        """One Condition per text-conditional modality, None for the others."""
        conditional = self.conditional_names
        return {
            m: self.bases[m].encode_prompt(prompts) if m in conditional else None
            for m in self.names
        }

    def cache_key(self) -> dict[str, Any]:
        """A fingerprint of every modality's weights (exact; reads all weights)."""
        return {m: weights_fingerprint(self.bases[m]) for m in self.names}

    @torch.no_grad()
    def predict_noise(self, xs, t, conds=None):
        conds = conds or {}
        if self._shared_unconditional(xs, conds):  # one base for every modality: one forward
            eps = self.bases[self.names[0]].predict_noise(
                torch.cat([xs[m] for m in self.names]), torch.cat([t] * len(self.names))
            )
            return dict(zip(self.names, eps.chunk(len(self.names))))
        return {m: self.bases[m].predict_noise(xs[m], t, conds.get(m)) for m in self.names}

    def _shared_unconditional(self, xs, conds) -> bool:
        first = self.bases[self.names[0]]
        return (
            len(self.names) > 1
            and all(self.bases[m] is first for m in self.names)
            and all(conds.get(m) is None for m in self.names)
            and len({xs[m].shape for m in self.names}) == 1
        )
