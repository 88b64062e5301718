"""Synchformer (Iashin et al. 2024) and the DeSync score of MMAudio's av-benchmark.

Written here with the parameter names of av-benchmark's ``av_bench/synchformer`` (the same
network as v-iashin/Synchformer's ``24-01-04T16-39-21`` AudioSet model, re-packaged by MMAudio
as ``synchformer_state_dict.pth``), so that file loads strict with
``torch.load(weights_only=True)`` (key manifest ``tests/fixtures/synchformer_keys.json``,
recorded from the reference code). Three parts:

- ``vfeat_extractor``: a MotionFormer-style ViT-B over a segment of 16 frames at 224 x 224:
  Conv3d (2, 16, 16) patches (8 x 14 x 14 tokens), a class token, spatial position embeddings
  tiled over time plus temporal embeddings, 12 divided space-time blocks (time attention with
  ``norm3``, then space attention with ``norm1``, then the MLP with ``norm2``; in both, the
  class token attends to every token and is a key / value of every group), a final LayerNorm
  on the patch tokens, then per frame a pre-norm ``nn.TransformerEncoderLayer`` with its own
  class token pools the 14 x 14 patches: (segments, 8, 768). (``patch_embed``, a Conv2d, is in
  the checkpoint but unused.)
- ``afeat_extractor``: an AST (HF ``ASTModel`` names) over a segment's (66 frames, 128 mels)
  log-mel: Conv2d 16 / stride 10 patches (12 frequency x 6 time), class and distillation
  tokens, 12 pre-norm layers, a final LayerNorm; the two special tokens dropped, a pre-norm
  encoder layer with a class token pools the 12 frequencies: (segments, 6, 768).
- ``vproj`` / ``aproj`` and ``transformer``: the 14 segments of a window are flattened and
  projected, LayerNorm'd, laid out as ``[OFF] v x 112 [MOD] a x 84`` plus a learned position
  embedding (198 tokens), 3 minGPT blocks, a LayerNorm, and ``off_head`` on the OFF token: 21
  logits for the offsets -2.0, -1.8, ..., +2.0 s.

Protocol ``desync/synchformer-avbench`` (av-benchmark @ 050a5cd: ``extract_video.py``,
``av_bench/data/video_dataset.py``, ``av_bench/extract.py``, ``av_bench/evaluate.py``):

1. Length: D = min(clip duration, ``seconds``) with ``seconds`` = 8.0 (av-benchmark's
   ``--audio_length`` default; it reads int(25 D) frames and int(16000 D) samples and takes
   the first D seconds). A clip shorter than one 4.8 s window (120 frames at 25 fps / 76800
   samples) is refused with one error; nothing is padded.
2. Video: decoded at 25 fps as ffmpeg's ``fps=25`` filter does (torio's
   ``add_basic_video_stream(frame_rate=25)``): output frame k is the last input frame whose
   timestamp, rounded to the nearest 1/25 s (halves away from zero), is <= k / 25; short side
   resized to 224 (long side int(224 * long / short)) with torchvision's bicubic antialiased
   resize of uint8 frames (on CPU: uint8 in, uint8 out), centre crop 224 (offsets
   int(round((size - 224) / 2)), Python rounding), / 255, (x - 0.5) / 0.5. Segments of 16
   frames every 8 (0.64 s every 0.32 s).
3. Audio: channel mean, 16 kHz, segments of 10240 samples every 5120 (the same 0.64 s / 0.32 s
   grid); torchaudio's ``MelSpectrogram(16000, n_fft=1024, win_length=400, hop_length=160,
   n_mels=128)`` (periodic Hann, centred with reflect padding, power 2, HTK mels 0-8 kHz, no
   filter normalisation): 65 frames, log(x + 1e-6), zero-padded to 66 frames,
   (x + 4.2677393) / (2 * 4.5689974).
4. Windows: the first 14 segments (0-4.8 s) and the last 14 (D - 4.8 s to D; the same window
   when D = 4.8 s, counted twice as av-benchmark does). Each window's predicted offset is the
   class grid value of the argmax logit (float32 ``linspace(-2, 2, 21)``); DeSync of a clip is
   the mean |offset| of its two windows, and of a set the mean over clips (seconds; lower is
   better).

Differences of input only: av-benchmark reads the audio from separate wav / flac files and
resamples with torchaudio's ``Resample``; here video and audio come from the same mp4 and
resampling uses ``mmdisco.media.resample_audio`` (a no-op at 16 kHz). av-benchmark compiles
the feature extractors with ``torch.compile``; here they run eagerly in full fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VIDEO_FPS = 25
SAMPLE_RATE = 16_000
IMAGE_SIZE = 224
SEGMENT_FRAMES, FRAME_STEP = 16, 8  # 0.64 s every 0.32 s
SEGMENT_SAMPLES, SAMPLE_STEP = 10_240, 5_120  # the same grid in samples
WINDOW_SEGMENTS = 14  # 4.8 s: (14 - 1) * 0.32 + 0.64
WINDOW_FRAMES = (WINDOW_SEGMENTS - 1) * FRAME_STEP + SEGMENT_FRAMES  # 120
WINDOW_SAMPLES = (WINDOW_SEGMENTS - 1) * SAMPLE_STEP + SEGMENT_SAMPLES  # 76800
WINDOW_SECONDS = WINDOW_FRAMES / VIDEO_FPS  # 4.8
DEFAULT_SECONDS = 8.0  # av-benchmark's --audio_length default
N_FFT, WIN_LENGTH, HOP_LENGTH, N_MELS = 1024, 400, 160, 128
SPEC_FRAMES = 66  # 65 STFT frames per segment, zero-padded to 66
LOG_EPS = 1e-6
MEL_MEAN, MEL_STD = -4.2677393, 4.5689974
OFFSETS = np.linspace(-2.0, 2.0, 21).astype(np.float32)  # the 21 classes, seconds


# -- video ---------------------------------------------------------------------------------
def _round_half_up(x: Fraction) -> int:
    """Nearest integer, halves away from zero (x >= 0): ffmpeg's AV_ROUND_NEAR_INF."""
    return math.floor(x + Fraction(1, 2))


def resample_frame_indices(num_frames: int, fps: float, target_fps: int = VIDEO_FPS) -> np.ndarray:
    """Indices of the native frames that ffmpeg's ``fps=target_fps`` filter outputs.

    Frame i (at i / fps s) gets the output timestamp p_i = round(i * target / fps) (halves up);
    output frame k is the last frame with p_i <= k; the output lasts round(num_frames *
    target / fps) frames (the stream's end, rounded the same way)."""
    rate = Fraction(fps).limit_denominator(1001)
    ratio = Fraction(target_fps) / rate
    pts = np.array([_round_half_up(i * ratio) for i in range(num_frames)])
    count = _round_half_up(num_frames * ratio)
    return np.searchsorted(pts, np.arange(count), side="right") - 1


def resized_size(height: int, width: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """torchvision's ``Resize(size)``: the short side to size, the long int(size * long / short)."""
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    return (size, new_long) if height <= width else (new_long, size)


def centre_crop_offsets(height: int, width: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """torchvision's ``CenterCrop(size)`` (the frame is at least size x size): (top, left)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def resize_crop_uint8(frames: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) uint8: bicubic antialiased short-side resize of
    uint8 frames (torch's native uint8 kernel, as torchvision v2 on CPU) and a centre crop."""
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {tuple(x.shape)} {x.dtype}")
    x = x.permute(0, 3, 1, 2).contiguous().cpu()  # (T, 3, H, W), as torio decodes
    h, w = x.shape[-2:]
    new_h, new_w = resized_size(h, w, size)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False,
                          antialias=True)  # fmt: skip
    top, left = centre_crop_offsets(new_h, new_w, size)
    return x[:, :, top : top + size, left : left + size]


def video_input(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 at 25 fps -> (T, 3, 224, 224) float32 in [-1, 1]."""
    x = resize_crop_uint8(frames).float().mul_(1.0 / 255)  # as torchvision's ToDtype(scale=True)
    return x.sub_(0.5).div_(0.5)


def video_segments(x: torch.Tensor) -> torch.Tensor:
    """(T, ...) -> (S, 16, ...): 16 frames every 8, complete segments only."""
    if x.shape[0] < SEGMENT_FRAMES:
        raise ValueError(f"a segment needs {SEGMENT_FRAMES} frames, got {x.shape[0]}")
    return x.unfold(0, SEGMENT_FRAMES, FRAME_STEP).movedim(-1, 1)


# -- audio ---------------------------------------------------------------------------------
def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_filters(n_freqs: int = N_FFT // 2 + 1, n_mels: int = N_MELS,
                sample_rate: int = SAMPLE_RATE) -> torch.Tensor:  # fmt: skip
    """(n_freqs, n_mels) triangular HTK-mel weights over 0 - sample_rate / 2 without area
    normalisation (torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")``), float32."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mels = torch.linspace(float(_hz_to_mel(0.0)), float(_hz_to_mel(sample_rate / 2)), n_mels + 2)
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    width = edges[1:] - edges[:-1]
    dist = edges[None, :] - freqs[:, None]  # (n_freqs, n_mels + 2)
    rising = -dist[:, :-2] / width[:-1]
    falling = dist[:, 2:] / width[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def log_mel(segments: torch.Tensor) -> torch.Tensor:
    """(..., 10240) audio segments at 16 kHz -> (..., 128, 66) normalised log-mel."""
    shape = segments.shape[:-1]
    x = segments.reshape(-1, segments.shape[-1]).float()
    window = torch.hann_window(WIN_LENGTH, periodic=True, device=x.device)
    spec = torch.stft(x, N_FFT, HOP_LENGTH, WIN_LENGTH, window, center=True, pad_mode="reflect",
                      normalized=False, onesided=True, return_complex=True)  # fmt: skip
    power = spec.abs().pow(2.0)  # (B, 513, frames)
    mel = torch.matmul(power.transpose(-1, -2), mel_filters().to(x.device)).transpose(-1, -2)
    mel = torch.log(mel + LOG_EPS)
    frames = mel.shape[-1]
    mel = F.pad(mel, (0, SPEC_FRAMES - frames)) if frames < SPEC_FRAMES else mel[..., :SPEC_FRAMES]
    mel = (mel - MEL_MEAN) / (2 * MEL_STD)
    return mel.reshape(*shape, N_MELS, SPEC_FRAMES)


def audio_segments(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N,) audio at 16 kHz -> (S, 10240): 0.64 s every 0.32 s, complete segments only."""
    x = torch.as_tensor(np.asarray(audio, np.float32))
    if x.ndim != 1 or x.shape[0] < SEGMENT_SAMPLES:
        raise ValueError(f"expected mono audio of >= {SEGMENT_SAMPLES} samples, got {x.shape}")
    return x.unfold(0, SEGMENT_SAMPLES, SAMPLE_STEP)


def audio_input(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N,) mono audio at 16 kHz -> (S, 1, 128, 66) log-mel segments (the network's input)."""
    return log_mel(audio_segments(audio))[:, None]


# -- a clip --------------------------------------------------------------------------------
def window_starts(num_segments: int) -> list[int]:
    """First segment of each window: the first 14 segments and the last 14."""
    if num_segments < WINDOW_SEGMENTS:
        raise ValueError(f"a window needs {WINDOW_SEGMENTS} segments, got {num_segments}")
    return [0, num_segments - WINDOW_SEGMENTS]


def prepare_clip(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int,
                 seconds: float = DEFAULT_SECONDS, name: str = "clip"):  # fmt: skip
    """A decoded clip -> (video (S, 16, 3, 224, 224) float32, audio (S, 1, 128, 66) float32).

    ``frames`` (F, H, W, 3) uint8 at their native ``fps``; ``audio`` (N,) mono. The first
    min(duration, ``seconds``) seconds are used; fewer than 4.8 s is an error."""
    from mmdisco.media import resample_audio

    if not seconds >= WINDOW_SECONDS:
        raise ValueError(f"DeSync's seconds must be >= {WINDOW_SECONDS:g} (a window): {seconds}")
    idx = resample_frame_indices(len(frames), fps)
    audio = resample_audio(np.asarray(audio, np.float32), sample_rate, SAMPLE_RATE)
    n_frames = min(len(idx), int(round(VIDEO_FPS * seconds, 6)))
    n_samples = min(len(audio), int(round(SAMPLE_RATE * seconds, 6)))
    if n_frames < WINDOW_FRAMES or n_samples < WINDOW_SAMPLES:
        raise ValueError(
            f"{name}: DeSync needs at least {WINDOW_SECONDS:g} s of video and audio (one "
            f"Synchformer window: 14 segments of 0.64 s every 0.32 s, i.e. {WINDOW_FRAMES} "
            f"frames at 25 fps and {WINDOW_SAMPLES} samples at 16 kHz); this clip has "
            f"{n_frames} frames at 25 fps and {n_samples} samples at 16 kHz "
            f"({min(n_frames / VIDEO_FPS, n_samples / SAMPLE_RATE):.2f} s). Clips are never "
            "padded: score longer clips or leave desync out."
        )
    video = video_segments(video_input(np.asarray(frames)[idx[:n_frames]]))
    mel = audio_input(audio[:n_samples])
    segments = min(len(video), len(mel))  # equal whenever video and audio last the same
    return video[:segments], mel[:segments]


def offsets_of(logits: torch.Tensor) -> np.ndarray:
    """(..., 21) logits -> predicted offsets in seconds (the grid value of the argmax)."""
    return OFFSETS[logits.argmax(-1).cpu().numpy()]


# -- the network ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SynchformerConfig:
    dim: int = 768
    video_depth: int = 12
    video_heads: int = 12
    image_size: int = 224
    patch_size: int = 16
    segment_frames: int = SEGMENT_FRAMES
    temporal_patch: int = 2
    mlp_ratio: int = 4
    audio_depth: int = 12
    audio_heads: int = 12
    audio_mlp: int = 3072
    mel_bins: int = N_MELS
    spec_frames: int = SPEC_FRAMES
    audio_patch: int = 16
    audio_stride: int = 10
    sync_depth: int = 3
    sync_heads: int = 8
    window_segments: int = WINDOW_SEGMENTS
    classes: int = 21

    @property
    def video_tokens(self) -> int:  # per segment, after spatial pooling
        return self.segment_frames // self.temporal_patch

    @property
    def audio_grid(self) -> tuple[int, int]:  # (frequency, time) patches per segment
        f = (self.mel_bins - self.audio_patch) // self.audio_stride + 1
        t = (self.spec_frames - self.audio_patch) // self.audio_stride + 1
        return f, t


class ClsPooling(nn.TransformerEncoderLayer):
    """A pre-norm encoder layer over [CLS] + tokens; returns the CLS output (spatial pooling of
    a frame's patches, frequency pooling of an audio time step)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__(dim, heads, hidden, dropout=0.0, activation=nn.GELU(), batch_first=True,
                         norm_first=True, layer_norm_eps=1e-6)  # fmt: skip
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D) -> (N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


# video (MotionFormer, divided space-time attention)
class DividedAttention(nn.Module):
    """Attention within groups of tokens (same patch across frames: "time"; same frame:
    "space"); the class token attends to every token and is a key / value of every group."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int, patches: int, over: str) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
            for t in self.qkv(x).chunk(3, dim=-1)
        )  # (B, h, 1 + F * P, dh)
        cls = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (B, h, 1, dh)

        def grouped(t):  # (B, h, F * P, dh) -> (B, h, groups, length, dh)
            t = t.unflatten(2, (frames, patches))
            return t.transpose(2, 3) if over == "time" else t

        qg, kg, vg = grouped(q[:, :, 1:]), grouped(k[:, :, 1:]), grouped(v[:, :, 1:])
        groups = qg.shape[2]
        kg = torch.cat([k[:, :, None, :1].expand(-1, -1, groups, -1, -1), kg], dim=3)
        vg = torch.cat([v[:, :, None, :1].expand(-1, -1, groups, -1, -1), vg], dim=3)
        out = F.scaled_dot_product_attention(qg, kg, vg)
        out = (out.transpose(2, 3) if over == "time" else out).flatten(2, 3)
        out = torch.cat([cls, out], dim=2).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class VideoMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DividedAttention(dim, heads)
        self.timeattn = DividedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = VideoMlp(dim, dim * mlp_ratio)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, frames: int, patches: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames, patches, "time")
        x = x + self.attn(self.norm1(x), frames, patches, "space")
        return x + self.mlp(self.norm2(x))


class _Proj(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.proj = conv


class MotionFormer(nn.Module):
    """(N, 3, 16, 224, 224) segments -> (N, 8, D): one feature per pair of frames."""

    def __init__(self, c: SynchformerConfig):
        super().__init__()
        d, p = c.dim, c.patch_size
        self.grid = c.image_size // p
        self.frames = c.segment_frames // c.temporal_patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, d))
        self.temp_embed = nn.Parameter(torch.zeros(1, self.frames, d))
        self.patch_embed = _Proj(nn.Conv2d(3, d, p, p))  # in the checkpoint, unused
        self.patch_embed_3d = _Proj(nn.Conv3d(3, d, (c.temporal_patch, p, p),
                                              (c.temporal_patch, p, p)))  # fmt: skip
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(d, c.video_heads, c.mlp_ratio) for _ in range(c.video_depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.spatial_attn_agg = ClsPooling(d, c.video_heads, c.mlp_ratio * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = self.patch_embed_3d.proj(x).flatten(2).transpose(1, 2)  # (N, t * h * w, D)
        patches = self.grid**2
        if x.shape[1] != self.frames * patches:
            raise ValueError(f"expected {self.frames} x {patches} patches, got {x.shape[1]}")
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        space = self.pos_embed[:, 1:].repeat(1, self.frames, 1)
        time = self.temp_embed.repeat_interleave(patches, dim=1)
        x = x + torch.cat([self.pos_embed[:, :1], space + time], dim=1)
        for block in self.blocks:
            x = block(x, self.frames, patches)
        x = self.norm(x[:, 1:])  # patch tokens only
        pooled = self.spatial_attn_agg(x.reshape(n * self.frames, patches, -1))
        return pooled.reshape(n, self.frames, -1)


# audio (AST with HF names)
class _Dense(nn.Module):
    def __init__(self, din: int, dout: int):
        super().__init__()
        self.dense = nn.Linear(din, dout)


class ASTSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            lin(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
            for lin in (self.query, self.key, self.value)
        )
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)


class ASTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = ASTSelfAttention(dim, heads)
        self.output = _Dense(dim, dim)


class ASTLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.attention = ASTAttention(dim, heads)
        self.intermediate = _Dense(dim, hidden)
        self.output = _Dense(hidden, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention.output.dense(self.attention.attention(self.layernorm_before(x)))
        h = F.gelu(self.intermediate.dense(self.layernorm_after(x)))
        return x + self.output.dense(h)


class ASTEmbeddings(nn.Module):
    def __init__(self, c: SynchformerConfig):
        super().__init__()
        f, t = c.audio_grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, f * t + 2, c.dim))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(1, c.dim, c.audio_patch, c.audio_stride)


class ASTEncoder(nn.Module):
    def __init__(self, c: SynchformerConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            ASTLayer(c.dim, c.audio_heads, c.audio_mlp) for _ in range(c.audio_depth)
        )


class ASTModel(nn.Module):
    def __init__(self, c: SynchformerConfig):
        super().__init__()
        self.embeddings = ASTEmbeddings(c)
        self.encoder = ASTEncoder(c)
        self.layernorm = nn.LayerNorm(c.dim, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 128 mels, 66 frames) -> (N, 2 + f * t, D)."""
        e = self.embeddings
        x = e.patch_embeddings.projection(x[:, None]).flatten(2).transpose(1, 2)  # f-major
        special = [e.cls_token.expand(x.shape[0], -1, -1),
                   e.distillation_token.expand(x.shape[0], -1, -1)]  # fmt: skip
        x = torch.cat([*special, x], dim=1) + e.position_embeddings
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class AudioFeatures(nn.Module):
    """(N, 128, 66) log-mel segments -> (N, 6, D): one feature per time patch."""

    def __init__(self, c: SynchformerConfig):
        super().__init__()
        self.grid = c.audio_grid
        self.ast = ASTModel(c)
        self.freq_attn_agg = ClsPooling(c.dim, c.audio_heads, c.audio_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, (f, t) = x.shape[0], self.grid
        x = self.ast(x)[:, 2:]  # without the class and distillation tokens
        x = x.reshape(n, f, t, -1).transpose(1, 2).reshape(n * t, f, -1)
        return self.freq_attn_agg(x).reshape(n, t, -1)


# the synchronisation transformer (minGPT blocks)
class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.key, self.query, self.value, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            lin(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
            for lin in (self.query, self.key, self.value)
        )
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.proj(y)


class SyncBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                 nn.Dropout(0.0))  # fmt: skip

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _PosEmb(nn.Module):
    def __init__(self, length: int, dim: int):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, length, dim))


class GlobalTransformer(nn.Module):
    """[OFF] v... [MOD] a... -> 21 offset logits (from the OFF token)."""

    def __init__(self, c: SynchformerConfig):
        super().__init__()
        d = c.dim
        length = 2 + c.window_segments * (c.video_tokens + c.audio_grid[1])
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, d))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, d))
        self.vis_in_lnorm, self.aud_in_lnorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.pos_emb_cfg = _PosEmb(length, d)
        self.blocks = nn.Sequential(*(SyncBlock(d, c.sync_heads) for _ in range(c.sync_depth)))
        self.ln_f = nn.LayerNorm(d)
        self.off_head = nn.Linear(d, c.classes)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        b = v.shape[0]
        x = torch.cat([self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(v),
                       self.MOD_tok.expand(b, -1, -1), self.aud_in_lnorm(a)], dim=1)  # fmt: skip
        x = self.blocks(x + self.pos_emb_cfg.pos_emb)
        return self.off_head(self.ln_f(x)[:, 0])


class Synchformer(nn.Module):
    """Segment features of video and audio, and the offset logits of a 14-segment window."""

    def __init__(self, config: SynchformerConfig | None = None):
        super().__init__()
        self.config = c = config or SynchformerConfig()
        self.vfeat_extractor = MotionFormer(c)
        self.afeat_extractor = AudioFeatures(c)
        self.vproj = nn.Linear(c.dim, c.dim)
        self.aproj = nn.Linear(c.dim, c.dim)
        self.transformer = GlobalTransformer(c)

    def video_features(self, x: torch.Tensor) -> torch.Tensor:
        """(S, 16, 3, H, W) segments in [-1, 1] -> (S, 8, D)."""
        return self.vfeat_extractor(x.transpose(1, 2))

    def audio_features(self, x: torch.Tensor) -> torch.Tensor:
        """(S, 1, 128, 66) log-mel segments -> (S, 6, D)."""
        return self.afeat_extractor(x[:, 0])

    def compare(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, 14, 8, D) video and (B, 14, 6, D) audio features -> (B, 21) offset logits."""
        if v.shape[1] != self.config.window_segments or a.shape[1] != v.shape[1]:
            raise ValueError(
                f"a window is {self.config.window_segments} segments of video and audio, "
                f"got {v.shape[1]} and {a.shape[1]}"
            )
        v, a = self.vproj(v).flatten(1, 2), self.aproj(a).flatten(1, 2)
        return self.transformer(v, a)

    def window_logits(self, video: torch.Tensor, audio: torch.Tensor,
                      chunk: int = 8) -> torch.Tensor:  # fmt: skip
        """One clip's (S, 16, 3, 224, 224) video and (S, 1, 128, 66) audio segments -> (2, 21)
        logits of its first and last 14-segment windows (features ``chunk`` segments at once)."""
        if len(video) != len(audio):
            raise ValueError(f"{len(video)} video segments but {len(audio)} audio segments")
        starts = window_starts(len(video))
        v = torch.cat([self.video_features(s) for s in video.split(chunk)])
        a = torch.cat([self.audio_features(s) for s in audio.split(chunk)])
        w = self.config.window_segments
        vw = torch.stack([v[s : s + w] for s in starts])
        aw = torch.stack([a[s : s + w] for s in starts])
        return self.compare(vw, aw)


def desync_of_logits(logits: torch.Tensor) -> float:
    """A clip's DeSync: mean |predicted offset| of its windows' logits (W, 21)."""
    return float(np.mean(np.abs(offsets_of(logits).astype(np.float64))))
