"""MM-Diffusion's coupled audio-video U-Net (Ruan et al., CVPR 2023), written for mmdisco.

One network denoises a video (B, F, C, H, W) (frames first, pixels in [-1, 1]) and a raw
waveform (B, 1, L) together. Read from researchmm/MM-Diffusion ``mm_diffusion/multimodal_unet.py``
(``MultimodalUNet``); module and parameter names are the official ones so that the released
checkpoints load strictly without renaming. What the code does, per block:

- video convolutions are "2d+1d": a per-frame 2-D conv, then a 1-D conv over frames at every
  pixel; pointwise layers are 3-D convs with kernel 1 (kernel 3 for the output layer);
- audio convolutions are 1-D with dilation 2**(k mod 10), k counting ResBlocks down the encoder
  and back up the decoder;
- down/up-sampling halves/doubles H, W (frames kept) and divides/multiplies L by 4;
- a ResBlock at a downsampling factor in ``video_attention_resolutions`` ends with a spatial
  then a temporal self-attention over the video; the middle ResBlocks also attend over audio;
- RS-MMA, the random-shift multi-modal attention (paper Sec. 3.3): at the downsampling factors
  in ``cross_attention_resolutions``, the tokens of video frame i attend to the audio of frames
  (i + s .. i + s + w - 1) mod F and the audio of frame i to those video frames, for a window w
  and a shift s drawn uniformly from 0 .. F - w on every forward. The shift is drawn from a
  ``torch.Generator`` here (the reference uses Python's global ``random``), or taken from an
  explicit list so a forward is reproducible.

Traps of the reference kept for weight compatibility: the time embedding is
``model_channels`` wide (not 4x); the middle block holds a full-window cross attention only when
the windows are exactly ``(1, 4, 8)``; norms are ``GroupNorm(32, C)`` wrapped in a module whose
parameter is ``<name>.GroupNorm.weight``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.nn import timestep_embedding

MAX_DILATION_EXPONENT = 10  # multimodal_unet.py: max_dila
ShiftDraw = Callable[[int], int]  # number of possible shifts n -> a shift in 0 .. n - 1


# -- shift draws ---------------------------------------------------------------------------
def shift_draw(generator: torch.Generator | None = None, shifts: Sequence[int] | None = None):
    """A window-shift source: the listed ``shifts`` in call order, else uniform draws from
    ``generator`` (torch's default generator when None)."""
    if shifts is not None:
        queue = list(shifts)

        def from_list(n: int) -> int:
            if not queue:
                raise ValueError("ran out of listed cross-attention shifts; pass one per block")
            s = int(queue.pop(0))
            if not 0 <= s < n:
                raise ValueError(f"cross-attention shift {s} is outside 0 .. {n - 1}")
            return s

        return from_list

    def from_generator(n: int) -> int:
        device = generator.device if generator is not None else "cpu"
        return int(torch.randint(n, (1,), generator=generator, device=device))

    return from_generator


# -- norms and convolutions (official names) -----------------------------------------------
class GroupNorm32(nn.Module):
    """GroupNorm(32, C) in float32 over (B, C, ...); video (B, F, C, H, W) is normalised over
    (F, H, W) per group. The parameter lives at ``.GroupNorm`` as in the reference."""

    def __init__(self, channels: int, frames_first: bool = False):
        super().__init__()
        self.frames_first = frames_first
        self.GroupNorm = nn.GroupNorm(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.frames_first:  # (B, F, C, H, W) -> (B, C, F, H, W) and back
            return self.GroupNorm(x.transpose(1, 2).float()).type(x.dtype).transpose(1, 2)
        return self.GroupNorm(x.float()).type(x.dtype)


class VideoConv(nn.Module):
    """Video conv on (B, F, C, H, W): "2d+1d" (per-frame 2-D, then 1-D over frames) or "3d"."""

    def __init__(self, c_in: int, c_out: int, kernel: int, kind: str = "2d+1d"):
        super().__init__()
        self.kind = kind
        if kind == "2d+1d":
            self.video_conv_spatial = nn.Conv2d(c_in, c_out, kernel, padding="same")
            self.video_conv_temporal = nn.Conv1d(c_out, c_out, kernel, padding="same")
        elif kind == "3d":
            self.video_conv = nn.Conv3d(c_in, c_out, kernel, padding="same")
        else:
            raise ValueError(f"video conv kind must be '2d+1d' or '3d', got {kind!r}")

    def forward(self, video: Tensor) -> Tensor:
        b, f = video.shape[:2]
        if self.kind == "3d":
            return self.video_conv(video.transpose(1, 2)).transpose(1, 2)
        x = self.video_conv_spatial(video.flatten(0, 1))  # (B F, C, H, W)
        c, h, w = x.shape[1:]
        x = x.reshape(b, f, c, h * w).permute(0, 3, 2, 1).reshape(b * h * w, c, f)
        x = self.video_conv_temporal(x)  # (B H W, C, F)
        return x.reshape(b, h, w, c, f).permute(0, 4, 3, 1, 2)  # (B, F, C, H, W)


class AudioConv(nn.Module):
    """1-D conv on (B, C, L) with "same" padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1):
        super().__init__()
        self.audio_conv = nn.Conv1d(c_in, c_out, kernel, padding="same", dilation=dilation)

    def forward(self, audio: Tensor) -> Tensor:
        return self.audio_conv(audio)


def resample_video(video: Tensor, direction: str) -> Tensor:
    """Halve (average 2x2) or double (nearest) H and W of (B, F, C, H, W)."""
    b, f = video.shape[:2]
    x = video.flatten(0, 1)
    x = F.avg_pool2d(x, 2) if direction == "down" else F.interpolate(x, scale_factor=2.0)
    return x.reshape(b, f, *x.shape[1:])


def resample_audio(audio: Tensor, direction: str) -> Tensor:
    """Divide (average over 4) or multiply (nearest) the length of (B, C, L) by 4."""
    return F.avg_pool1d(audio, 4) if direction == "down" else F.interpolate(audio, scale_factor=4.0)


# -- attention -----------------------------------------------------------------------------
def attend(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Softmax attention, channels head-major: q (B, H*D, T), k, v (B, H*D, S) -> (B, H*D, T)."""
    b, width, t = q.shape
    d = width // heads
    q, k, v = (x.reshape(b * heads, d, x.shape[-1]) for x in (q, k, v))
    weight = torch.einsum("bdt,bds->bts", q, k) / d**0.5
    out = torch.einsum("bts,bds->bdt", weight.float().softmax(-1).type(q.dtype), v)
    return out.reshape(b, width, t)


class SingleModalAtten(nn.Module):
    """Self-attention over the last axis of (B, C, T), residual, zero-initialised output."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        return x + self.proj_out(attend(q, k, v, self.num_heads))


class CrossAttentionBlock(nn.Module):
    """RS-MMA (paper Sec. 3.3): windowed video <-> audio attention with a random frame shift.

    Video tokens of frame i attend to the audio tokens of frames (i + s) .. (i + s + w - 1)
    mod F, and audio tokens of frame i to the video tokens of those frames; the audio of frame
    i is tokens i*n .. (i+1)*n - 1 with n = L // F (the last frame keeps the remainder).
    """

    def __init__(self, channels: int, num_heads: int, local_window: int, window_shift: bool):
        super().__init__()
        self.num_heads, self.local_window, self.window_shift = num_heads, local_window, window_shift
        self.v_norm = GroupNorm32(channels)
        self.a_norm = GroupNorm32(channels)
        self.v_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.a_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.video_proj_out = VideoConv(channels, channels, 1, kind="3d")
        self.audio_proj_out = AudioConv(channels, channels, 1)
        for p in (*self.video_proj_out.parameters(), *self.audio_proj_out.parameters()):
            nn.init.zeros_(p)

    def forward(self, video: Tensor, audio: Tensor, draw: ShiftDraw) -> tuple[Tensor, Tensor]:
        b, f, c, h, w = video.shape
        length = audio.shape[-1]
        n = length // f  # audio tokens per frame
        shift = draw(f - self.local_window + 1) if self.window_shift else 0
        tokens = video.permute(0, 2, 1, 3, 4).reshape(b, c, f * h * w)  # (B, C, F H W)
        vq, vk, vv = self.v_qkv(self.v_norm(tokens)).chunk(3, dim=1)
        aq, ak, av = self.a_qkv(self.a_norm(audio)).chunk(3, dim=1)
        video_out, audio_out = [], []
        a_window = torch.arange(self.local_window * n, device=audio.device)
        v_window = torch.arange(self.local_window * h * w, device=video.device)
        for i in range(f):
            a_keys = ((i + shift) * n + a_window) % length  # audio of frames i+s .. i+s+w-1
            v_keys = ((i + shift) * h * w + v_window) % (f * h * w)
            v_sl = slice(i * h * w, (i + 1) * h * w)
            a_sl = slice(i * n, (i + 1) * n if i < f - 1 else length)
            video_out.append(
                attend(vq[..., v_sl], ak[..., a_keys], av[..., a_keys], self.num_heads)
            )
            audio_out.append(
                attend(aq[..., a_sl], vk[..., v_keys], vv[..., v_keys], self.num_heads)
            )
        v = torch.cat(video_out, dim=-1).reshape(b, c, f, h, w).transpose(1, 2)
        return video + self.video_proj_out(v), audio + self.audio_proj_out(torch.cat(audio_out, -1))


# -- residual blocks -----------------------------------------------------------------------
class ResBlock(nn.Module):
    """Coupled ResBlock: video and audio branches share the timestep modulation (FiLM)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        audio_dilation: int = 1,
        resample: str | None = None,  # "down" | "up" | None
        video_attention: bool = False,
        audio_attention: bool = False,
        num_heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        out = out_channels or channels
        self.resample = resample
        self.video_in_layers = nn.Sequential(
            GroupNorm32(channels, frames_first=True), nn.SiLU(), VideoConv(channels, out, 3)
        )
        self.audio_in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), AudioConv(channels, out, 3, audio_dilation)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out))
        self.video_out_layers = nn.Sequential(
            GroupNorm32(out, frames_first=True),
            nn.SiLU(),
            nn.Dropout(dropout),
            VideoConv(out, out, 1, kind="3d"),
        )
        self.audio_out_layers = nn.Sequential(
            GroupNorm32(out), nn.SiLU(), nn.Dropout(dropout), AudioConv(out, out, 1)
        )
        for p in (*self.video_out_layers[3].parameters(), *self.audio_out_layers[3].parameters()):
            nn.init.zeros_(p)
        same = out == channels
        self.video_skip_connection = nn.Identity() if same else VideoConv(channels, out, 1, "3d")
        self.audio_skip_connection = nn.Identity() if same else AudioConv(channels, out, 1)
        self.video_attention, self.audio_attention = video_attention, audio_attention
        if video_attention:
            self.spatial_attention_block = SingleModalAtten(out, num_heads)
            self.temporal_attention_block = SingleModalAtten(out, num_heads)
        if audio_attention:
            self.audio_attention_block = SingleModalAtten(out, num_heads)

    def forward(self, video: Tensor, audio: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        video_h = self.video_in_layers(video)  # conv first, then resample (unlike ADM)
        audio_h = self.audio_in_layers(audio)
        if self.resample is not None:
            video_h, video = (resample_video(x, self.resample) for x in (video_h, video))
            audio_h, audio = (resample_audio(x, self.resample) for x in (audio_h, audio))
        scale, shift = self.emb_layers(emb).type(video.dtype).chunk(2, dim=1)  # (B, C) each
        video_h = self.video_out_layers[0](video_h) * (1 + scale[:, None, :, None, None])
        video_h = self.video_out_layers[1:](video_h + shift[:, None, :, None, None])
        audio_h = self.audio_out_layers[0](audio_h) * (1 + scale[..., None]) + shift[..., None]
        audio_h = self.audio_out_layers[1:](audio_h)
        video = self.video_skip_connection(video) + video_h  # (B, F, C, H, W)
        audio = self.audio_skip_connection(audio) + audio_h  # (B, C, L)
        if self.video_attention:
            video = self._video_attention(video)
        if self.audio_attention:
            audio = self.audio_attention_block(audio)
        return video, audio

    def _video_attention(self, video: Tensor) -> Tensor:
        b, f, c, h, w = video.shape
        x = self.spatial_attention_block(video.reshape(b * f, c, h * w))  # over pixels
        x = x.reshape(b, f, c, h * w).permute(0, 3, 2, 1).reshape(b * h * w, c, f)
        x = self.temporal_attention_block(x)  # over frames
        return x.reshape(b, h, w, c, f).permute(0, 4, 3, 1, 2)


class InitialBlock(nn.Module):
    """Lift pixels and waveform to the model width (2d+1d video conv, 1-D audio conv)."""

    def __init__(self, video_channels: int, audio_channels: int, width: int):
        super().__init__()
        self.video_conv = VideoConv(video_channels, width, 3)
        self.audio_conv = AudioConv(audio_channels, width, 3)

    def forward(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        return self.video_conv(video), self.audio_conv(audio)


class Stage(nn.ModuleList):
    """A run of blocks, indexed like the reference's ``TimestepEmbedSequential``."""

    def forward(self, video, audio, emb, draw: ShiftDraw):
        for block in self:
            if isinstance(block, ResBlock):
                video, audio = block(video, audio, emb)
            elif isinstance(block, CrossAttentionBlock):
                video, audio = block(video, audio, draw)
            else:
                video, audio = block(video, audio)
        return video, audio


# -- the network -----------------------------------------------------------------------------
@dataclass
class CoupledUNetConfig:
    """Hyper-parameters; the defaults are the released Landscape / AIST++ models' (see
    :func:`mmdisco.bases.mmdiffusion.build_official` for where each comes from)."""

    video_size: tuple[int, int, int, int] = (16, 3, 64, 64)  # (F, C, H, W)
    audio_size: tuple[int, int] = (1, 25600)  # (C, L): 1.6 s at 16 kHz
    model_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: tuple[float, ...] = (1, 2, 3, 4)
    num_heads: int = 4  # self-attention heads in ResBlocks
    num_head_channels: int = 64  # cross-attention head width (-1: use num_heads)
    cross_attention_resolutions: tuple[int, ...] = (2, 4, 8)
    cross_attention_windows: tuple[int, ...] = (1, 4, 8)
    cross_attention_shift: bool = True
    video_attention_resolutions: tuple[int, ...] = (2, 4, 8)
    audio_attention_resolutions: tuple[int, ...] = field(default_factory=tuple)
    learn_sigma: bool = False
    dropout: float = 0.0


class CoupledUNet(nn.Module):
    """MM-Diffusion's ``MultimodalUNet`` (scale-shift norm, ResBlock resampling).

    forward: video (B, F, C, H, W), audio (B, C, L), integer steps (B,) -> (video eps,
    audio eps) of the same shapes (channels doubled with ``learn_sigma``).
    """

    def __init__(self, config: CoupledUNetConfig | None = None):
        super().__init__()
        cfg = self.config = config or CoupledUNetConfig()
        mc = cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, mc), nn.SiLU(), nn.Linear(mc, mc))
        ch = input_ch = int(cfg.channel_mult[0] * mc)
        self._dilation = 1
        self.input_blocks = nn.ModuleList(
            [Stage([InitialBlock(cfg.video_size[1], cfg.audio_size[0], ch)])]
        )
        skips, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [self._res(ch, int(mult * mc), ds)]
                ch = int(mult * mc)
                blocks += self._cross(ch, ds)
                self.input_blocks.append(Stage(blocks))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Stage([self._res(ch, ch, None, resample="down")]))
                skips.append(ch)
                ds *= 2
        self.middle_blocks = Stage(self._middle(ch))
        self._dilation -= 1
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                blocks = [self._res(ch + skips.pop(), int(mult * mc), ds, step=-1)]
                ch = int(mult * mc)
                blocks += self._cross(ch, ds)
                if level and i == cfg.num_res_blocks:
                    blocks.append(self._res(ch, ch, None, resample="up", step=0))
                    ds //= 2
                self.output_blocks.append(Stage(blocks))
        sigma_factor = 2 if cfg.learn_sigma else 1
        self.audio_out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), AudioConv(input_ch, cfg.audio_size[0] * sigma_factor, 3)
        )
        self.video_out = nn.Sequential(
            GroupNorm32(ch, frames_first=True),
            nn.SiLU(),
            VideoConv(input_ch, cfg.video_size[1] * sigma_factor, 3, kind="3d"),
        )
        for p in (*self.audio_out[2].parameters(), *self.video_out[2].parameters()):
            nn.init.zeros_(p)

    # -- construction helpers (the dilation counter walks down and back up the U) ----------
    def _res(self, c_in, c_out, ds, resample=None, step=1, attention_everywhere=False):
        cfg = self.config
        block = ResBlock(
            c_in,
            cfg.model_channels,
            c_out,
            audio_dilation=2 ** (self._dilation % MAX_DILATION_EXPONENT),
            resample=resample,
            video_attention=attention_everywhere or ds in cfg.video_attention_resolutions,
            audio_attention=attention_everywhere or ds in cfg.audio_attention_resolutions,
            num_heads=cfg.num_heads,
            dropout=cfg.dropout,
        )
        self._dilation += step
        return block

    def _cross(self, ch, ds, window=None, shift=None):
        cfg = self.config
        if window is None:
            if ds not in cfg.cross_attention_resolutions:
                return []
            window = cfg.cross_attention_windows[cfg.cross_attention_resolutions.index(ds)]
        heads = cfg.num_heads if cfg.num_head_channels == -1 else ch // cfg.num_head_channels
        shift = cfg.cross_attention_shift if shift is None else shift
        return [CrossAttentionBlock(ch, heads, window, shift)]

    def _middle(self, ch):
        """ResBlock (+ full-window cross attention iff windows == (1, 4, 8)) + ResBlock."""
        first = self._res(ch, ch, None, step=0, attention_everywhere=True)
        last = self._res(ch, ch, None, step=0, attention_everywhere=True)
        if tuple(self.config.cross_attention_windows) != (1, 4, 8):
            return [first, last]
        return [first, *self._cross(ch, None, self.config.video_size[0], False), last]

    def forward(
        self,
        video: Tensor,
        audio: Tensor,
        timesteps: Tensor,
        generator: torch.Generator | None = None,
        shifts: Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``shifts``: one window shift per shifting cross-attention block, in call order
        (encoder, then decoder); otherwise each is drawn from ``generator``."""
        draw = shift_draw(generator, shifts)
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        skips = []
        for stage in self.input_blocks:
            video, audio = stage(video, audio, emb, draw)
            skips.append((video, audio))
        video, audio = self.middle_blocks(video, audio, emb, draw)
        for stage in self.output_blocks:
            skip_v, skip_a = skips.pop()
            video, audio = torch.cat([video, skip_v], 2), torch.cat([audio, skip_a], 1)
            video, audio = stage(video, audio, emb, draw)
        return self.video_out(video), self.audio_out(audio)

    def num_shift_draws(self) -> int:
        """How many shifts one forward draws (the length ``shifts`` must have)."""
        return sum(isinstance(m, CrossAttentionBlock) and m.window_shift for m in self.modules())
