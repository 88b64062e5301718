"""ImageBind's input pipeline (``imagebind/data.py`` of facebookresearch/ImageBind), rewritten.

- Clips (pytorchvideo's ``ConstantClipsPerVideoSampler``): clip i of n starts at
  i * max(duration - 2, 0) / n seconds and lasts 2 s (n = 3 for audio, 5 for video; a clip
  shorter than the duration repeats the same span).
- Audio: the first channel (Kaldi's ``channel=-1`` takes channel 0), 16 kHz; each clip is the
  samples [int(start * 16000), int(end * 16000)), its mean subtracted IN PLACE in the shared
  buffer (the reference does so through a slice view, so overlapping later clips see shifted
  samples); a Kaldi fbank (25 ms Hann window, 10 ms shift, 128 mel bins over 20 Hz - 8 kHz,
  pre-emphasis 0.97, DC removed per frame, power spectrum on 512 points, log with floor
  float32 eps, no dither, no energy), frames zero-padded or cut to 204, then
  (x - (-4.268)) / 9.138. -> (3, 1, 128, 204).
- Video: duration = frames / fps; clip frames are [ceil(fps * start), min(ceil(fps * end), F))
  (pytorchvideo's decord reader), two of them at linspace(0, T - 1, 2) truncated; values / 255;
  short side resized to 224 (bilinear, align_corners=False; the long side floor(long * 224 /
  short)); CLIP mean / std; three 224 crops along the long side (start, centre at
  ceil((L - 224) / 2), end). -> (15, 3, 2, 224, 224).
- Text: CLIP's byte-level BPE (``bpe_simple_vocab_16e6.txt.gz``, the reference's file),
  html-unescaped twice, whitespace collapsed, lower-cased; ([start] + tokens) cut to 76, then
  [end], zero-padded to 77. ftfy's mojibake repair is not applied (it changes only broken unicode).

Resampling of audio at other rates uses ``mmdisco.media.resample_audio`` (the reference uses
torchaudio's sinc resampler): our samples are written at 16 kHz.
"""

from __future__ import annotations

import gzip
import html
import math
import os
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16_000
CLIP_SECONDS = 2
AUDIO_CLIPS, VIDEO_CLIPS = 3, 5
MEL_BINS, TARGET_FRAMES = 128, 204
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224
CONTEXT_LENGTH = 77


def clip_times(duration: float, clips: int, clip_seconds: int = CLIP_SECONDS):
    """[(start, end)] as Fractions: pytorchvideo's ConstantClipsPerVideoSampler."""
    max_start = Fraction(max(Fraction(duration) - clip_seconds, 0))
    step = max_start / clips
    out = []
    for i in range(clips):
        out.append((step * i, step * i + clip_seconds))
        if step * (i + 1) > max_start:  # the sampler stops once past the last start
            break
    return out


# -- audio ---------------------------------------------------------------------------------
def _mel(f):
    return 1127.0 * torch.log(1.0 + f / 700.0)


def kaldi_mel_banks(num_bins: int = MEL_BINS, n_fft: int = 512, sample_rate: int = SAMPLE_RATE,
                    low: float = 20.0) -> torch.Tensor:  # fmt: skip
    """(num_bins, n_fft // 2 + 1) Kaldi triangular mel weights (the Nyquist column is zero)."""
    high = sample_rate / 2
    mel_low, mel_high = _mel(torch.tensor(low)), _mel(torch.tensor(high))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float32)[:, None]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float32))[None]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1))


def kaldi_fbank(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(N,) float32 -> (frames, 128) log mel energies as Kaldi's compute-fbank-feats with
    ImageBind's options (see the module docstring)."""
    size, shift, n_fft = int(sample_rate * 0.025), int(sample_rate * 0.010), 512
    if len(wave) < size:
        return torch.empty(0, MEL_BINS)
    n = 1 + (len(wave) - size) // shift
    frames = wave.as_strided((n, size), (shift, 1)).clone()
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC offset
    previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]
    frames = frames - 0.97 * previous  # pre-emphasis, the first sample against itself
    frames = frames * torch.hann_window(size, periodic=False, dtype=wave.dtype)
    power = torch.fft.rfft(F.pad(frames, (0, n_fft - size))).abs().pow(2)
    mel = power @ kaldi_mel_banks(n_fft=n_fft, sample_rate=sample_rate).T
    return torch.clamp(mel, min=torch.finfo(mel.dtype).eps).log()


def audio_clips(audio: np.ndarray, sample_rate: int) -> torch.Tensor:
    """(N,) or (C, N) audio -> (3, 1, 128, 204) normalised log-mel clips."""
    from mmdisco.media import resample_audio

    x = np.asarray(audio, np.float32)
    x = x[0] if x.ndim == 2 else x
    if sample_rate != SAMPLE_RATE:
        x = resample_audio(x, sample_rate, SAMPLE_RATE)
    wave = torch.from_numpy(np.array(x, np.float32))
    out = []
    for start, end in clip_times(len(wave) / SAMPLE_RATE, AUDIO_CLIPS):
        clip = wave[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        clip -= clip.mean()  # in place on the shared buffer, as the reference
        fbank = kaldi_fbank(clip).T  # (128, frames)
        pad = TARGET_FRAMES - fbank.shape[1]
        fbank = F.pad(fbank, (0, pad)) if pad > 0 else fbank[:, :TARGET_FRAMES]
        out.append(((fbank - AUDIO_MEAN) / AUDIO_STD)[None])
    return torch.stack(out)


# -- video ---------------------------------------------------------------------------------
def clip_frame_indices(num_frames: int, fps: float, start, end) -> list[int]:
    """pytorchvideo's decord reader: [ceil(fps * start), min(ceil(fps * end), num_frames))."""
    return list(range(math.ceil(fps * start), min(math.ceil(fps * end), num_frames)))


def short_side_scale(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(C, T, H, W) -> short side = size, long side floor(long * size / short), bilinear."""
    _, _, h, w = x.shape
    new = (math.floor(h / w * size), size) if w < h else (size, math.floor(w / h * size))
    return F.interpolate(x, size=new, mode="bilinear", align_corners=False)


def three_crops(x: torch.Tensor, size: int = IMAGE_SIZE) -> list[torch.Tensor]:
    """(C, T, H, W) -> 3 crops of size x size along the long side: start, centre, end."""
    h, w = x.shape[-2:]
    y0, x0 = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
    if h > w:
        offsets = [(0, x0), (y0, x0), (h - size, x0)]
    else:
        offsets = [(y0, 0), (y0, x0), (y0, w - size)]
    return [x[..., y : y + size, xx : xx + size] for y, xx in offsets]


def video_clips(frames: np.ndarray, fps: float) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (15, 3, 2, 224, 224): 5 temporal clips x 3 spatial crops."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()  # CTHW
    mean = torch.tensor(CLIP_MEAN)[:, None, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None, None]
    out = []
    for start, end in clip_times(len(frames) / fps, VIDEO_CLIPS):
        idx = clip_frame_indices(len(frames), fps, start, end)
        if not idx:
            raise ValueError(f"no frame in the clip [{float(start)}, {float(end)}) s")
        pick = torch.linspace(0, len(idx) - 1, 2).clamp(0, len(idx) - 1).long()
        clip = video[:, [idx[int(i)] for i in pick]] / 255.0
        clip = (short_side_scale(clip) - mean) / std
        out += three_crops(clip)
    return torch.stack(out)


# -- text ----------------------------------------------------------------------------------
@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable character table."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class BPETokenizer:
    """CLIP's byte-level BPE from the reference's ``bpe_simple_vocab_16e6.txt.gz``."""

    PATTERN = (
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
        r"""[^\s\p{L}\p{N}]+"""
    )

    def __init__(self, bpe_path: str | os.PathLike, context_length: int = CONTEXT_LENGTH):
        import regex

        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.pattern = regex.compile(self.PATTERN, regex.IGNORECASE)
        self.regex, self.context_length = regex, context_length
        self._cache: dict[str, list[str]] = {}

    def _bpe(self, token: str) -> list[str]:
        if token in self._cache:
            return self._cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = list(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(text)).strip()
        text = self.regex.sub(r"\s+", " ", text).strip().lower()
        table, ids = _bytes_to_unicode(), []
        for token in self.pattern.findall(text):
            token = "".join(table[b] for b in token.encode("utf-8"))
            ids += [self.encoder[t] for t in self._bpe(token)]
        return ids

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(B, 77) ids: start, tokens cut to 75 + 1, end, zero-padded."""
        sot, eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [sot, *self.encode(text)][: self.context_length - 1] + [eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out
