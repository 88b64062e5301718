"""The two-stream ResBlock discriminator of MMDisCo (paper Sec. 4.2, A.3 Table 6, A.8).

Each modality has its own stream of ResBlocks, built like MM-Diffusion's encoder without
attention: GroupNorm + SiLU + conv, the timestep (+ text) embedding injected by an adaptive
scale-shift norm, a zero-initialised output conv and a residual skip, with average-pool
downsampling between levels. Both streams are pooled over space to (B, T, C) features and a
fusion head turns them into one logit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from mmdisco.nn import timestep_embedding

VIDEO_CONVS = ("2d+1d", "3d")
AUDIO_CONVS = ("1d", "2d")
FUSIONS = ("mlp", "transformer", "frieren", "framewise", "framewise_pooled", "framewise_code")
SINUSOIDS = ("adm", "diffusers")


@dataclass(frozen=True)
class Fusion:
    """The fusion head over the pooled streams (``TwoStreamDiscriminator(fusion=...)``; a
    config gives it as a mapping, ``fusion: {kind: transformer, layers: 4, ...}``, or just the
    kind as a string).

    ``kind``: "mlp" (the paper's default, one Linear when ``mlp_hidden`` is empty),
    "framewise", "transformer" or "frieren"; ``mlp_hidden`` is read by "mlp" / "framewise",
    the rest (token width ``dim``, ``out_dim`` of the class-token projection, ``layers``,
    ``heads`` x ``head_dim``, ``max_tokens`` learned positions) by the transformer heads.
    """

    kind: str = "mlp"
    mlp_hidden: tuple[int, ...] = ()
    dim: int = 256
    out_dim: int = 256
    layers: int = 4
    heads: int = 8
    head_dim: int = 64
    max_tokens: int = 128
    codes: int = 16  # "framewise_code": the size J of the shared code

    @classmethod
    def of(cls, value: str | Mapping | Fusion) -> Fusion:
        if isinstance(value, Fusion):
            return value
        if isinstance(value, str):
            value = {"kind": value}
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown fusion settings {sorted(unknown)}: use {[f.name for f in fields(cls)]}"
            )
        fusion = cls(**{**value, "mlp_hidden": tuple(value.get("mlp_hidden", ()))})
        if fusion.kind not in FUSIONS:
            raise ValueError(f"fusion kind {fusion.kind!r} is not one of {FUSIONS}")
        return fusion


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32 (stable under bf16 autocast), cast back."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)


class SpatioTemporalConv(nn.Module):
    """The "2d+1d" video conv: a 2-D conv over (H, W) per frame, then a 1-D conv over frames."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.spatial = nn.Conv2d(in_channels, out_channels, kernel_size, padding="same")
        self.temporal = nn.Conv1d(out_channels, out_channels, kernel_size, padding="same")

    def forward(self, x: Tensor) -> Tensor:
        b, _, f, h, w = x.shape  # (B, C, F, H, W)
        x = x.transpose(1, 2).flatten(0, 1)  # (B*F, C, H, W)
        x = self.spatial(x)  # (B*F, C', H, W)
        x = x.unflatten(0, (b, f)).permute(0, 3, 4, 2, 1).flatten(0, 2)  # (B*H*W, C', F)
        x = self.temporal(x)  # (B*H*W, C', F)
        return x.unflatten(0, (b, h, w)).permute(0, 3, 4, 1, 2)  # (B, C', F, H, W)


def make_video_conv(
    kind: str, in_channels: int, out_channels: int, kernel_size: int = 3
) -> nn.Module:
    """A video conv on (B, C, F, H, W): "2d+1d" (factorised) or "3d"; pointwise if kernel_size=1."""
    if kernel_size == 1:
        return nn.Conv3d(in_channels, out_channels, 1)
    if kind == "2d+1d":
        return SpatioTemporalConv(in_channels, out_channels, kernel_size)
    if kind == "3d":
        return nn.Conv3d(in_channels, out_channels, kernel_size, padding="same")
    raise ValueError(f"video conv {kind!r} is not one of {VIDEO_CONVS}")


def make_audio_conv(
    kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
) -> nn.Module:
    """An audio conv: "1d" on waveforms (B, C, T), "2d" on spectrogram latents (B, C, T, F)."""
    if kind == "1d":
        return nn.Conv1d(in_channels, out_channels, kernel_size, padding="same", dilation=dilation)
    if kind == "2d":
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding="same", dilation=dilation)
    raise ValueError(f"audio conv {kind!r} is not one of {AUDIO_CONVS}")


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """One stream's ResBlock (MM-Diffusion encoder block without attention).

    h = conv(SiLU(GN(x))), optionally average-pooled; out = skip(pool(x)) +
    zero_conv(SiLU(GN(h) * (1 + scale) + shift)), with (scale, shift) = Linear(SiLU(emb)).
    """

    def __init__(
        self,
        in_conv: nn.Module,
        out_conv: nn.Module,
        skip: nn.Module,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        down: nn.Module | None = None,
        norm_groups: int = 32,
    ):
        super().__init__()
        self.in_norm = GroupNorm32(norm_groups, in_channels)
        self.in_conv = in_conv
        self.down = down or nn.Identity()
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.out_norm = GroupNorm32(norm_groups, out_channels, affine=False)
        self.out_conv = zero_init(out_conv)
        self.skip = skip

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_conv(F.silu(self.in_norm(x)))  # (B, C', *S)
        h = self.down(h)  # (B, C', *S')
        scale, shift = self.emb_proj(F.silu(emb)).chunk(2, dim=1)  # (B, C'), (B, C')
        scale = scale.reshape(*scale.shape, *(1,) * (h.ndim - 2))  # (B, C', 1...)
        shift = shift.reshape(*shift.shape, *(1,) * (h.ndim - 2))  # (B, C', 1...)
        h = F.silu(self.out_norm(h) * (1 + scale) + shift)  # (B, C', *S')
        return self.skip(self.down(x)) + self.out_conv(h)  # (B, C', *S')


class Stream(nn.Module):
    """One modality's encoder: a stem conv, then `blocks_per_level` ResBlocks per channel
    multiplier with a downsampling ResBlock between levels (paper Table 6).

    ``conv(in, out, kernel_size, dilation)`` builds this modality's convs, ``down()`` its pooling.
    """

    def __init__(
        self,
        conv: Callable[[int, int, int, int], nn.Module],
        down: Callable[[], nn.Module],
        in_channels: int,
        channels: int,
        channel_mult: Sequence[int],
        blocks_per_level: int,
        emb_dim: int,
        norm_groups: int,
        max_dilation: int = 1,
    ):
        super().__init__()
        ch = channels * channel_mult[0]
        self.stem = conv(in_channels, ch, 3, 1)
        self.blocks = nn.ModuleList()

        def add_block(out: int, pool: nn.Module | None = None) -> None:
            # the k-th block (k = 1, 2, ...) dilates by 2^(k mod max_dilation), as MM-Diffusion
            dilation = 2 ** ((len(self.blocks) + 1) % max_dilation)
            skip = nn.Identity() if ch == out else conv(ch, out, 1, 1)
            self.blocks.append(
                ResBlock(
                    conv(ch, out, 3, dilation),
                    conv(out, out, 1, 1),
                    skip,
                    ch,
                    out,
                    emb_dim,
                    pool,
                    norm_groups,
                )  # fmt: skip
            )

        for level, mult in enumerate(channel_mult):
            for _ in range(blocks_per_level):
                add_block(channels * mult)
                ch = channels * mult
            if level < len(channel_mult) - 1:
                add_block(ch, down())
        self.out_channels = ch

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.stem(x)  # (B, C, *S)
        for block in self.blocks:
            x = block(x, emb)  # (B, C_l, *S_l)
        return x


class Attention(nn.Module):
    """Multi-head self-attention written out (the math path: it supports double backward)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.scale = heads, head_dim**-0.5
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_k = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_v = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (
            p(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, H, N, d)
            for p in (self.to_q, self.to_k, self.to_v)
        )
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)  # (B, H, N, N)
        out = (weights @ v).transpose(1, 2).flatten(2)  # (B, N, H*d)
        return self.to_out(out)  # (B, N, D)


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: x + Attn(LN(x)), then x + FF(LN(x)) with a GELU MLP (4x)."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_mult: int = 4):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x))  # (B, N, D)
        return x + self.ff(self.ff_norm(x))  # (B, N, D)


class MeanConcatHead(nn.Module):
    """ "MLP" fusion (the paper's default): mean over time, concatenate [video, audio], MLP.

    With ``hidden=()`` the MLP is the single output Linear, as in the official code, the
    released models and the paper's parameter counts (Tables 6, 8, 9). That head is additive,
    logit = f(v) + g(a), so d logit / d a does not depend on v; ``hidden`` adds SiLU layers.
    """

    def __init__(self, feat_dim: int, hidden: Sequence[int] = ()):
        super().__init__()
        widths = [2 * feat_dim, *hidden]
        self.mlp = nn.Sequential(
            *(m for a, b in zip(widths[:-1], widths[1:]) for m in (nn.Linear(a, b), nn.SiLU()))
        )
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, video: Tensor, audio: Tensor, temb: Tensor) -> Tensor:
        x = torch.cat([video.mean(1), audio.mean(1)], dim=1)  # (B, 2C)
        return self.out(self.mlp(x)).squeeze(1)  # (B,)


class FramewiseHead(nn.Module):
    """ "framewise" fusion (ours, not in the paper): the audio tokens are average-pooled (linearly
    interpolated) to the video's frame count, each frame's [video, audio] features go through
    one MLP to a score, and the logit is the mean score over frames.

    It sees co-occurrence frame by frame (a colour and a pitch, an appearance and an onset in
    the same frame), which a mean-then-MLP head cannot, at the cost of an MLP; it learns in a
    few hundred steps where the transformer heads need thousands.
    """

    def __init__(
        self, feat_dim: int, hidden: Sequence[int] = (64,), pooled: bool = False, codes: int = 0
    ):
        super().__init__()
        if not hidden:
            raise ValueError(
                "framewise fusion needs mlp_hidden, e.g. [64]: without a hidden "
                "layer the score is additive and cannot couple the modalities"
            )
        widths = [2 * feat_dim, *hidden]
        self.mlp = nn.Sequential(
            *(m for a, b in zip(widths[:-1], widths[1:]) for m in (nn.Linear(a, b), nn.SiLU()))
        )
        self.out = nn.Linear(widths[-1], 1)
        # "framewise_pooled": plus a coupled score of the clip-level (time-averaged) features,
        # which pools the evidence for what does not change over time (a class) over all frames
        self.pooled = MeanConcatHead(feat_dim, hidden) if pooled else None
        # "framewise_code": plus log sum_j p_a(j) p_v(j) J, a code of J states each modality
        # infers from its time-averaged features alone: the form of the exact ratio of a world
        # whose modalities share a discrete latent (synthetic_oracle.py), which rewards using
        # every state (the mutual information of the two codes) rather than the fewest that work
        self.code = None
        if codes:
            if codes < 2:
                raise ValueError(f"fusion.codes must be >= 2, got {codes}")
            self.code = nn.ModuleDict({
                m: nn.Sequential(nn.Linear(feat_dim, hidden[0]), nn.SiLU(),
                                 nn.Linear(hidden[0], codes))
                for m in ("audio", "video")
            })  # fmt: skip

    def forward(self, video: Tensor, audio: Tensor, temb: Tensor) -> Tensor:
        frames = video.shape[1]  # video (B, F, C), audio (B, T, C)
        audio_tokens = audio
        if audio.shape[1] != frames:
            audio = F.interpolate(audio.transpose(1, 2), size=frames, mode="linear",
                                  align_corners=False).transpose(1, 2)  # (B, F, C)  # fmt: skip
        x = torch.cat([video, audio], dim=2)  # (B, F, 2C)
        logit = self.out(self.mlp(x)).squeeze(2).mean(1)  # (B,)
        if self.pooled is not None:
            logit = logit + self.pooled(video, audio, temb)  # (B,)
        if self.code is not None:
            la = self.code["audio"](audio_tokens.mean(1)).float().log_softmax(1)  # (B, J)
            lv = self.code["video"](video.mean(1)).float().log_softmax(1)  # (B, J)
            logit = logit + (la + lv).logsumexp(1) + math.log(la.shape[1])  # (B,)
        return logit


class TransformerHead(nn.Module):
    """Transformer fusion (paper A.8): [class, time, video..., audio...] tokens + learned positions.

    "transformer": video and audio features become tokens of width D, concatenated along time.
    "frieren": the shorter stream is interpolated (nearest) to the longer one's length, each is
    projected to D/2 and they are concatenated along channels (after Frieren, Wang et al. 2024).
    The class token's output, through ``proj`` and ``out``, is the logit.
    """

    def __init__(
        self,
        kind: str,
        feat_dim: int,
        time_dim: int,
        dim: int = 256,
        out_dim: int = 256,
        layers: int = 4,
        heads: int = 8,
        head_dim: int = 64,
        max_tokens: int = 128,
    ):
        super().__init__()
        if kind == "frieren" and dim % 2:
            raise ValueError(f"frieren fusion needs an even width, got {dim}")
        self.kind = kind
        stream_dim = dim // 2 if kind == "frieren" else dim
        self.video_in = nn.Linear(feat_dim, stream_dim)
        self.audio_in = nn.Linear(feat_dim, stream_dim)
        self.time_in = nn.Linear(time_dim, dim)
        self.cls_token = nn.Parameter(dim**-0.5 * torch.randn(1, 1, dim))
        self.pos_emb = nn.Parameter(0.02 * torch.randn(max_tokens, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, head_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)
        self.out = nn.Linear(out_dim, 1)

    def tokens(self, video: Tensor, audio: Tensor) -> Tensor:
        if self.kind == "transformer":
            return torch.cat([self.video_in(video), self.audio_in(audio)], dim=1)  # (B, F+T, D)
        length = max(video.shape[1], audio.shape[1])
        video = F.interpolate(video.transpose(1, 2), size=length).transpose(1, 2)  # (B, L, C)
        audio = F.interpolate(audio.transpose(1, 2), size=length).transpose(1, 2)  # (B, L, C)
        return torch.cat([self.video_in(video), self.audio_in(audio)], dim=2)  # (B, L, D)

    def forward(self, video: Tensor, audio: Tensor, temb: Tensor) -> Tensor:
        x = self.tokens(video, audio)  # (B, N, D)
        time = self.time_in(temb).unsqueeze(1)  # (B, 1, D)
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, time, x], dim=1)  # (B, N+2, D)
        if x.shape[1] > self.pos_emb.shape[0]:
            raise ValueError(f"{x.shape[1]} tokens exceed max_tokens={self.pos_emb.shape[0]}")
        x = x + self.pos_emb[: x.shape[1]]  # (B, N+2, D)
        for block in self.blocks:
            x = block(x)  # (B, N+2, D)
        x = self.proj(self.norm(x[:, 0]))  # (B, out_dim)
        return self.out(x).squeeze(1)  # (B,)


class TwoStreamDiscriminator(nn.Module):
    """logit D(a_t, v_t, t[, c]) for audio-video pairs (MMDisCo, paper Sec. 4.2, A.3, A.8).

    Input layouts (the base-model wrappers convert to these):
      audio: raw waveform (B, C, T) with ``audio_conv="1d"`` (dilated 1-D convs, in-domain);
             a spectrogram latent (B, C, T, F) with ``audio_conv="1d"`` has its frequency bins
             folded into channels, (B, C * F, T) (``audio_channels`` = C * F): every conv then
             sees the whole spectrum, so pitch stays readable after the pooling (the synthetic
             world's small discriminator);
             or a latent spectrogram (B, C, T, F), time before frequency, with ``audio_conv="2d"``
             (AudioLDM: (B, 8, T, 16); Auffusion's (B, 4, 32, T) transposed to (B, 4, T, 32)).
      video: (B, C, F, H, W): channels, frames, height, width.
      t:     (B,) integer diffusion steps (one t shared by both modalities).
      cond:  None, or {"audio": (B, D_a), "video": (B, D_v)}: each base model's prompt embedding
             from its own text encoder, mean-pooled ((B, L, D) inputs are mean-pooled here).
             Only read when ``audio_text_dim`` / ``video_text_dim`` are set; each is projected
             and ADDED to that stream's timestep embedding. The unconditional branch (10% prompt
             dropout in training, classifier-free guidance at sampling) is the base's
             empty-prompt embedding passed the same way, as in the official code.
    Output: (B,) float32 logits. Features are pooled per stream to (B, T, C) and fused by the
    head ``fusion`` describes (:class:`Fusion`: kind "mlp" | "transformer" | "frieren" |
    "framewise" and its sizes); the order inside the head is [video, audio].
    The default "mlp" head with ``mlp_hidden=()`` is the paper's (one Linear, additive: see
    ``MeanConcatHead``); give ``mlp_hidden`` or a transformer head for cross-modal terms.

    Released-checkpoint compatibility knobs (see ``mmdisco.discriminator.convert``):
    ``sinusoid="diffusers"`` uses diffusers' [sin, cos] timestep features instead of
    ``mmdisco.nn.timestep_embedding``; ``logit_eps > 0`` returns the official
    ``log(sigmoid(h) + eps) - log(1 - sigmoid(h) + eps)`` (saturates near |h| = -log eps)
    instead of the raw logit h.
    """

    def __init__(
        self,
        audio_channels: int = 8,
        video_channels: int = 4,
        audio_conv: str = "2d",
        video_conv: str = "2d+1d",
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 4),
        blocks_per_level: int = 2,
        audio_down: int | Sequence[int] = (1, 2),
        video_down: Sequence[int] = (1, 2, 2),
        audio_max_dilation: int = 1,
        time_dim: int = 128,
        audio_text_dim: int | None = None,
        video_text_dim: int | None = None,
        fusion: str | Mapping | Fusion = "mlp",
        norm_groups: int = 32,
        sinusoid: str = "adm",
        logit_eps: float = 0.0,
    ):
        super().__init__()
        fusion = Fusion.of(fusion)
        if sinusoid not in SINUSOIDS:
            raise ValueError(f"sinusoid {sinusoid!r} is not one of {SINUSOIDS}")
        if video_conv not in VIDEO_CONVS or audio_conv not in AUDIO_CONVS:
            raise ValueError(f"convs must be in {VIDEO_CONVS} / {AUDIO_CONVS}")
        self.sinusoid, self.logit_eps, self.time_dim = sinusoid, logit_eps, time_dim
        self.audio_conv = audio_conv
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.audio_text_proj = nn.Linear(audio_text_dim, time_dim) if audio_text_dim else None
        self.video_text_proj = nn.Linear(video_text_dim, time_dim) if video_text_dim else None
        pool = nn.AvgPool1d if audio_conv == "1d" else nn.AvgPool2d
        audio_down = tuple(audio_down) if isinstance(audio_down, Sequence) else audio_down
        video_down = tuple(video_down)
        common = dict(
            channels=channels,
            channel_mult=tuple(channel_mult),
            blocks_per_level=blocks_per_level,
            emb_dim=time_dim,
            norm_groups=norm_groups,
        )
        self.audio_stream = Stream(
            conv=lambda i, o, k, d: make_audio_conv(audio_conv, i, o, k, d),
            down=lambda: pool(audio_down, audio_down),
            in_channels=audio_channels,
            max_dilation=audio_max_dilation,
            **common,
        )
        self.video_stream = Stream(
            conv=lambda i, o, k, d: make_video_conv(video_conv, i, o, k),
            down=lambda: nn.AvgPool3d(video_down, video_down),
            in_channels=video_channels,
            **common,
        )
        feat_dim = self.video_stream.out_channels
        if fusion.kind == "mlp":
            self.head = MeanConcatHead(feat_dim, fusion.mlp_hidden)
        elif fusion.kind in ("framewise", "framewise_pooled", "framewise_code"):
            pooled = fusion.kind == "framewise_pooled"
            codes = fusion.codes if fusion.kind == "framewise_code" else 0
            self.head = FramewiseHead(feat_dim, fusion.mlp_hidden, pooled=pooled, codes=codes)
        else:
            self.head = TransformerHead(
                fusion.kind, feat_dim, time_dim, fusion.dim, fusion.out_dim, fusion.layers,
                fusion.heads, fusion.head_dim, fusion.max_tokens,
            )  # fmt: skip

    def time_features(self, t: Tensor) -> Tensor:
        """Sinusoidal features of t (B,) -> (B, time_dim)."""
        if self.sinusoid == "diffusers":
            return get_timestep_embedding(t, self.time_dim)
        return timestep_embedding(t, self.time_dim)

    def embeddings(
        self, t: Tensor, cond: Mapping[str, Tensor] | None, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Timestep embedding, and per stream the timestep + projected text embedding."""
        temb = self.time_mlp(self.time_features(t).to(dtype))  # (B, E)
        embs = []
        for name, proj in (("audio", self.audio_text_proj), ("video", self.video_text_proj)):
            if proj is None:
                embs.append(temb)
                continue
            if cond is None or name not in cond:
                raise ValueError(f"this discriminator is text-conditional: pass cond[{name!r}]")
            text = cond[name] if cond[name].ndim == 2 else cond[name].mean(1)  # (B, D_m)
            embs.append(temb + proj(text.to(dtype)))  # (B, E)
        return temb, embs[0], embs[1]

    def forward(
        self,
        audio: Tensor,
        video: Tensor,
        t: Tensor,
        cond: dict[str, Tensor] | None = None,
        pairs: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The logit (B,) of the pairs (audio[i], video[i]) at t[i]. With ``pairs = (ia, iv)``
        (index tensors of length P) the logit (P,) of (audio[ia[p]], video[iv[p]]) at t[ia[p]]
        (which must equal t[iv[p]]): every stream runs once, only the head runs per pair."""
        v, a, temb = self.streams(audio, video, t, cond)
        if pairs is not None:
            ia, iv = pairs
            v, a, temb = v[iv], a[ia], temb[ia]
        return self.head_logit(v, a, temb)

    def streams(
        self, audio: Tensor, video: Tensor, t: Tensor, cond: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each modality's stream alone: video tokens (B, F, C), audio tokens (B, T', C) and the
        step embedding (B, E). The head couples them (:meth:`head_logit`); pairing the tokens of
        one clip's audio with another's video at the same t scores the mismatched pair without
        running the streams again (``JointLoss``'s contrastive term)."""
        temb, audio_emb, video_emb = self.embeddings(t, cond, video.dtype)  # (B, E) x3
        if self.audio_conv == "1d" and audio.ndim == 4:  # (B, C, T, F) -> (B, C * F, T)
            audio = audio.transpose(2, 3).flatten(1, 2)
        a = self.audio_stream(audio, audio_emb)  # (B, C, T') or (B, C, T', F')
        v = self.video_stream(video, video_emb)  # (B, C, F, H', W')
        a = a.flatten(2) if a.ndim == 3 else a.mean(3)  # (B, C, T')
        v = v.mean((3, 4))  # (B, C, F)
        return v.transpose(1, 2), a.transpose(1, 2), temb

    def head_logit(self, video_tokens: Tensor, audio_tokens: Tensor, temb: Tensor) -> Tensor:
        """The logit (B,) of the pairs (video_tokens[i], audio_tokens[i]) at temb[i]."""
        h = self.head(video_tokens, audio_tokens, temb).float()  # (B,)
        if self.logit_eps > 0:
            p = torch.sigmoid(h)  # (B,)
            h = torch.log(p + self.logit_eps) - torch.log1p(self.logit_eps - p)  # (B,)
        return h

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"params={n / 1e6:.2f}M, sinusoid={self.sinusoid}, logit_eps={self.logit_eps}"
