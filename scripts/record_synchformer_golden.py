"""Record Synchformer's parameter names and shapes and golden DeSync numbers from av-benchmark.

Needs a checkout of https://github.com/hkchengrex/av-benchmark (the reference code lives there,
not in this package) and its packages: torch, torchvision, torchaudio, transformers<4.48 (its
AST copy imports ``find_pruneable_heads_and_indices``), timm, einops, omegaconf. Decoders and
the other metrics' packages (torio, ImageBind, pytorchvideo, colorlog, CLAP, PaSST) are stubbed
out: only the Synchformer code, the video transform and the feature functions are used.

Writes
- ``tests/fixtures/synchformer_keys.json``: ``Synchformer().state_dict()`` keys and shapes (the
  layout of ``synchformer_state_dict.pth``, which av-benchmark loads strict);
- ``tests/fixtures/synchformer_golden.json``: the video transform on two seeded clips, the
  log-mel of ``encode_audio_with_sync`` and, for a TINY Synchformer built from the reference
  classes (width 32, 2 layers, 56-pixel video patches; the global transformer's width-768
  position embedding and head replaced by width-32 ones of the same classes) with the seeded
  weights of ``tests/seeded_weights.py``, the segment features of ``encode_video_with_sync`` /
  ``encode_audio_with_sync`` and the logits and DeSync of ``av_bench/evaluate.py``'s loop (first
  and last 14 segments) on a seeded 5.6 s clip; and the FULL-size network (seed 1, residual
  output projections x 0.3) on one video segment, 14 audio segments and seeded window features
  (``make test-slow``).

    python scripts/record_synchformer_golden.py --av-benchmark /path/to/av-benchmark
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = dict(dim=32, depth=2, heads=2, patch=56, audio_mlp=64)
CLIP_SECONDS, CLIP_FRAMES, CLIP_SAMPLES = 5.6, 140, 89_600


def _stub(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def import_reference(path: Path):
    """The reference modules, with the decoders / other metrics' packages stubbed."""
    for name in ["torio", "imagebind", "imagebind.models", "pytorchvideo", "pytorchvideo.data"]:
        _stub(name)
    _stub("torio.io", StreamingMediaDecoder=None)
    _stub("imagebind.models.imagebind_model", ModalityType=None)
    sys.modules["imagebind.models"].imagebind_model = sys.modules[
        "imagebind.models.imagebind_model"
    ]
    _stub("pytorchvideo.data.clip_sampling", ConstantClipsPerVideoSampler=None)
    _stub("colorlog", ColoredFormatter=lambda fmt: logging.Formatter("%(levelname)s %(message)s"))
    _stub("av_bench.extraction_models", ExtractionModels=None)
    sys.path.insert(0, str(path))
    import extract_video
    from av_bench import extract
    from av_bench.data import video_dataset
    from av_bench.synchformer import ast, motionformer, synchformer, transformer

    return types.SimpleNamespace(
        extract_video=extract_video, extract=extract, video_dataset=video_dataset, ast=ast,
        motionformer=motionformer, synchformer=synchformer, transformer=transformer,
    )  # fmt: skip


def tiny_reference(ref) -> torch.nn.Module:
    """A tiny Synchformer of the reference classes (see the module docstring)."""
    from transformers.models.audio_spectrogram_transformer import ASTConfig

    d = TINY["dim"]
    load = ref.motionformer.OmegaConf.load

    def tiny_cfg(path):
        cfg = load(path)
        cfg.VIT.EMBED_DIM, cfg.VIT.DEPTH, cfg.VIT.NUM_HEADS = d, TINY["depth"], TINY["heads"]
        cfg.VIT.PATCH_SIZE = TINY["patch"]
        return cfg

    originals = ref.motionformer.OmegaConf, ref.ast.ASTConfig
    ref.motionformer.OmegaConf = types.SimpleNamespace(load=tiny_cfg)
    ref.ast.ASTConfig = lambda: ASTConfig(
        hidden_size=d, num_hidden_layers=TINY["depth"], num_attention_heads=TINY["heads"],
        intermediate_size=TINY["audio_mlp"],
    )  # fmt: skip
    try:
        model = ref.synchformer.Synchformer()
    finally:
        ref.motionformer.OmegaConf, ref.ast.ASTConfig = originals
    model.vproj, model.aproj = torch.nn.Linear(d, d), torch.nn.Linear(d, d)
    model.transformer = ref.transformer.GlobalTransformer(
        tok_pdrop=0.0, embd_pdrop=0.1, resid_pdrop=0.1, attn_pdrop=0.1, n_layer=TINY["depth"],
        n_head=TINY["heads"], n_embd=d,
    )  # fmt: skip
    model.transformer.pos_emb_cfg = ref.transformer.RandInitPositionalEncoding([198], d)
    model.transformer.off_head = torch.nn.Linear(d, 21)
    return model


RESIDUAL_OUT = ("attn.proj.weight", "mlp.fc2.weight", "output.dense.weight")


def full_size_state(keys: dict) -> dict:
    """Seed-1 weights for the full-size network, residual output projections x 0.3."""
    from seeded_weights import seeded_state_dict

    state = seeded_state_dict(keys, seed=1)
    return {k: v * 0.3 if k.endswith(RESIDUAL_OUT) else v for k, v in state.items()}


def _u8_hash(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()


def _list(x: torch.Tensor, digits: int = 7):
    return np.round(x.double().numpy(), digits).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--av-benchmark", type=Path, required=True)
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(args.av_benchmark), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"  # fmt: skip
    source = f"hkchengrex/av-benchmark @ {commit[:7]}"
    torch.set_grad_enabled(False)
    ref = import_reference(args.av_benchmark)
    import torchaudio
    import torchvision
    sys.path.insert(0, str(ROOT / "tests"))
    from seeded_weights import seeded_audio, seeded_state_dict, seeded_uint8

    # 1. the real checkpoint's layout
    keys = {k: list(v.shape) for k, v in ref.synchformer.Synchformer().state_dict().items()}
    (FIXTURES / "synchformer_keys.json").write_text(json.dumps({
        "source": f"av_bench.synchformer.synchformer.Synchformer().state_dict() of {source} "
                  "(synchformer_state_dict.pth of MMAudio's release v0.1 loads into it strict)",
        "keys": keys,
    }, indent=0) + "\n")  # fmt: skip

    # 2. the video transform (VideoDataset.sync_transform) on uint8 (T, C, H, W), as torio gives
    transform = ref.video_dataset.VideoDataset([]).sync_transform
    video_cases = {}
    for name, shape, seed in [("landscape_up", (3, 50, 90, 3), 11),
                              ("portrait_down", (2, 301, 250, 3), 12)]:  # fmt: skip
        frames = torch.from_numpy(seeded_uint8(shape, seed)).permute(0, 3, 1, 2).contiguous()
        out = transform(frames)
        u8 = torch.round((out * 0.5 + 0.5) * 255).to(torch.uint8)
        assert torch.allclose(u8.float() / 255 * 2 - 1, out, atol=1e-6)
        video_cases[name] = {
            "shape": list(shape), "seed": seed, "out_shape": list(out.shape),
            "uint8_sha256": _u8_hash(u8), "sum": float(out.double().sum()),
        }  # fmt: skip

    # 3. a tiny network, seeded, on a seeded 5.6 s clip (25 fps, 16 kHz)
    model = tiny_reference(ref).eval()
    tiny_keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_state_dict(tiny_keys, seed=0))
    frames = seeded_uint8((CLIP_FRAMES, 48, 64, 3), 21)
    audio = seeded_audio(CLIP_SAMPLES, 22)
    video = transform(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous())[None]
    vfeats = ref.extract_video.encode_video_with_sync(model, video)[0]  # (S, 8, D)
    mel_transform = ref.extract.torchaudio.transforms.MelSpectrogram(  # extraction_models.py
        sample_rate=16000, win_length=400, hop_length=160, n_fft=1024, n_mels=128,
    )  # fmt: skip
    captured = {}

    def capture_afeats(x):
        captured["mel"] = x[0, :, 0].clone()  # (S, 128, 66), the network's input
        return original_afeats(x)

    original_afeats, model.extract_afeats = model.extract_afeats, capture_afeats
    afeats = ref.extract.encode_audio_with_sync(model, torch.from_numpy(audio)[None],
                                                mel_transform)[0]  # fmt: skip
    mel = captured["mel"]
    grid = ref.synchformer.make_class_grid(-2, 2, 21)
    logits, offsets = [], []
    for part in (slice(None, 14), slice(-14, None)):  # av_bench/evaluate.py
        out = model.compare_v_a(vfeats[None, part], afeats[None, part])
        logits.append(out[0])
        offsets.append(abs(grid[torch.argmax(out, dim=-1)[0]].item()))
    golden = {
        "source": f"{source}: VideoDataset.sync_transform, extract_video.encode_video_with_sync, "
                  "extract.encode_audio_with_sync with extraction_models' MelSpectrogram, "
                  f"evaluate.py's DeSync loop; torch {torch.__version__}, torchvision "
                  f"{torchvision.__version__}, torchaudio {torchaudio.__version__}; a tiny "
                  "Synchformer of the reference classes (scripts/record_synchformer_golden.py) "
                  "with tests/seeded_weights.py seed 0",
        "video_transform": video_cases,
        "tiny": TINY,
        "tiny_keys": tiny_keys,
        "clip": {"frames": [CLIP_FRAMES, 48, 64, 3], "frames_seed": 21,
                 "samples": CLIP_SAMPLES, "audio_seed": 22, "seconds": CLIP_SECONDS},
        "video_sum": float(video.double().sum()),
        "mel_shape": list(mel.shape),
        "mel_sum": float(mel.double().sum()),
        "mel_first": _list(mel[0, ::8, ::5]),
        "mel_last": _list(mel[-1, ::8, ::5]),
        "vfeats_shape": list(vfeats.shape),
        "vfeats": _list(vfeats[[0, -1]]),
        "vfeats_sum": float(vfeats.double().sum()),
        "afeats_shape": list(afeats.shape),
        "afeats": _list(afeats[[0, -1]]),
        "afeats_sum": float(afeats.double().sum()),
        "logits": [_list(x) for x in logits],
        "offsets": offsets,
        "desync": float(np.mean(offsets)),
    }  # fmt: skip
    # 4. the full-size network (seed 1, residual output projections x 0.3 so that 12 random
    # layers stay O(1)) on one video segment, 14 audio segments and seeded window features
    full = ref.synchformer.Synchformer().eval()
    full.load_state_dict(full_size_state(keys))
    video = transform(torch.from_numpy(seeded_uint8((16, 120, 160, 3), 5)).permute(0, 3, 1, 2)
                      .contiguous())[None, None]  # fmt: skip
    full_v = ref.extract_video.encode_video_with_sync(full, video[0])[0]  # (1, 8, 768)
    wav = torch.from_numpy(seeded_audio(76_800, 6))[None]
    full_a = ref.extract.encode_audio_with_sync(full, wav, mel_transform)[0]  # (14, 6, 768)
    g = torch.Generator().manual_seed(0)
    v, a = torch.randn(2, 14, 8, 768, generator=g), torch.randn(2, 14, 6, 768, generator=g)
    golden["full"] = {
        "video": {"frames": [16, 120, 160, 3], "seed": 5}, "audio": {"samples": 76_800, "seed": 6},
        "vfeats": _list(full_v[0, :, ::16]), "vfeats_sum": float(full_v.double().sum()),
        "afeats": _list(full_a[[0, -1], :, ::16]), "afeats_sum": float(full_a.double().sum()),
        "logits": _list(full.compare_v_a(v, a)),
    }  # fmt: skip
    (FIXTURES / "synchformer_golden.json").write_text(json.dumps(golden) + "\n")
    print(f"wrote {len(keys)} keys and the goldens (offsets {offsets}) from {source}")


if __name__ == "__main__":
    main()
