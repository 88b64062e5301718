"""The paper's evaluation suite over folders of mp4s with sound, each metric named by protocol.

    suite = MetricSuite(SuiteConfig(weights_dir="weights/", video_fps=8))
    suite.evaluate("runs/vc2/guided", ["fvd_stylegan", "fad", "ib", "av_align"], reference="real/")
    # {"fvd/stylegan-v": ..., "fad/vggish": ..., "ib_av/imagebind-huge": ..., "ib_tv/...": ...,
    #  "ib_ta/...": ..., "av_align/tempotokens-2025": ..., "av_align/mmdisco-a10.1": ...}

Implemented (``PROTOCOLS``): FVD / KVD on I3D-400 logits (VideoGPT / MM-Diffusion), FVD with
StyleGAN-V's TorchScript detector (the paper's), FAD on VGGish (AudioLDM's, the paper's), FD on
PANNs Cnn14 (AudioLDM's "FD"), ImageBind IB-AV / IB-TV / IB-TA (the paper's), CLAP text-audio
score, AV-Align (2025 reference and the paper's A.10.1 variant), FAD on AudioCLIP x 1e4
(MM-Diffusion's), DeSync with Synchformer (MMAudio's av-benchmark; clips of at least 4.8 s).

Every output key is ``metric/protocol``: two FVDs (``fvd/videogpt-i3d400``, MM-Diffusion's;
``fvd/stylegan-v``, the MMDisCo paper's) give different numbers and are never mixed. Features
of a set of files are cached per (file list with sizes and mtimes, network) in ``cache_dir``,
so a reference set is embedded once. Networks load lazily from local weights only
(``mmdisco.metrics.weights``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmdisco.media import read_video_with_audio, resample_audio
from mmdisco.metrics.frechet import frechet_distance_features, polynomial_mmd
from mmdisco.metrics.weights import load_into, load_state_dict, weights_path

# protocol -> (kind, network); kind: fd-svd / fd-sqrtm / kvd against the reference, or per-clip
PROTOCOLS = {
    "fvd/videogpt-i3d400": ("fd-svd", "i3d400"),
    "kvd/videogpt-i3d400": ("kvd", "i3d400"),
    "fvd/stylegan-v": ("fd-sqrtm", "i3d_torchscript"),
    "fad/vggish": ("fd-sqrtm", "vggish"),
    "fd/panns-cnn14-16k": ("fd-sqrtm", "panns_cnn14_16k"),
    "fad/audioclip-mmdiffusion": ("fd-svd-x1e4", "audioclip"),
    "clap/laion-clap": ("per-clip", "clap"),
    "ib_av/imagebind-huge": ("per-clip", "imagebind"),
    "ib_tv/imagebind-huge": ("per-clip", "imagebind"),
    "ib_ta/imagebind-huge": ("per-clip", "imagebind"),
    "av_align/tempotokens-2025": ("per-clip", None),
    "av_align/mmdisco-a10.1": ("per-clip", None),
    "desync/synchformer-avbench": ("per-clip", "synchformer"),
}
ALIASES = {
    "fvd": ["fvd/videogpt-i3d400"],
    "kvd": ["kvd/videogpt-i3d400"],
    "fvd_stylegan": ["fvd/stylegan-v"],
    "fad": ["fad/vggish"],
    "fd_panns": ["fd/panns-cnn14-16k"],
    "fad_audioclip": ["fad/audioclip-mmdiffusion"],
    "clap": ["clap/laion-clap"],
    "ib": ["ib_av/imagebind-huge", "ib_tv/imagebind-huge", "ib_ta/imagebind-huge"],
    "ib_av": ["ib_av/imagebind-huge"],
    "ib_tv": ["ib_tv/imagebind-huge"],
    "ib_ta": ["ib_ta/imagebind-huge"],
    "av_align": ["av_align/tempotokens-2025", "av_align/mmdisco-a10.1"],
    "desync": ["desync/synchformer-avbench"],
}
# IB-AV, IB-TV, IB-TA: cosine similarity of ImageBind embeddings (v: video, a: audio, t: text)
IB_PAIRS = {
    "ib_av/imagebind-huge": ("v", "a"),
    "ib_tv/imagebind-huge": ("t", "v"),
    "ib_ta/imagebind-huge": ("t", "a"),
}

def resolve_metrics(names) -> list[str]:
    """Aliases and protocol names -> protocol names, in order, without repeats."""
    out = []
    for name in names:
        found = ALIASES.get(name, [name] if name in PROTOCOLS else None)
        if found is None:
            raise ValueError(
                f"unknown metric {name!r}; known: {sorted(ALIASES)}, {sorted(PROTOCOLS)}"
            )
        out += [p for p in found if p not in out]
    return out


def list_clips(folder: str | os.PathLike) -> list[Path]:
    paths = sorted(Path(folder).glob("*.mp4"))
    if not paths:
        raise FileNotFoundError(f"no *.mp4 in {folder}")
    return paths


@dataclass
class SuiteConfig:
    weights_dir: str | None = None  # one folder with every network's expected file
    paths: dict = field(default_factory=dict)  # per-network override: {network: path}
    cache_dir: str | None = ".cache/features"  # None: no feature cache
    device: str = "auto"  # auto: cuda when present
    batch_size: int = 8
    progress: bool = True
    imagebind: dict = field(default_factory=dict)  # ImageBindConfig overrides (tests: tiny)
    video_fps: float | None = None  # FVD / KVD: read every clip at this frame rate (None: native)
    synchformer: dict = field(default_factory=dict)  # SynchformerConfig overrides (tests: tiny)
    desync_seconds: float = 8.0  # DeSync scores the first min(duration, this) s (av-benchmark)


class FeatureCache:
    """Features of a file list, keyed by (network, [(path, size, mtime_ns)])."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None
        self.hits = 0

    def key(self, network: str, paths: list[Path]) -> str:
        files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
        digest = hashlib.sha256(json.dumps([network, files]).encode()).hexdigest()[:20]
        return f"{network}-{digest}"

    def get(self, network: str, paths: list[Path], compute: Callable[[], np.ndarray]):
        if self.root is None:
            return compute()
        path = self.root / f"{self.key(network, paths)}.npy"
        if path.exists():
            self.hits += 1
            return np.load(path)
        features = np.asarray(compute())
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, features)
        os.replace(tmp, path)
        return features


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """No TF32 in convolutions / matmuls while embedding (the references ran in full fp32)."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MetricSuite:
    """Loads each feature network on first use; evaluates folders against a reference."""

    def __init__(self, config: SuiteConfig | None = None):
        self.cfg = config or SuiteConfig()
        device = self.cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.cache = FeatureCache(self.cfg.cache_dir)
        self._nets: dict[str, object] = {}

    # -- networks ----------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return weights_path(name, self.cfg.weights_dir, (self.cfg.paths or {}).get(name))

    def network(self, name: str):
        if name not in self._nets:
            self._nets[name] = self._load(name)
        return self._nets[name]

    def _loaded(self, net: torch.nn.Module, state: dict, path: Path, assign: bool = False):
        load_into(net, state, str(path), assign=assign)
        return net.eval().to(self.device)

    def _load(self, name: str):
        path = self._path(name)
        if name == "i3d_torchscript":
            return torch.jit.load(str(path), map_location=self.device).eval()
        if name == "i3d400":
            from mmdisco.metrics.i3d import InceptionI3d

            return self._loaded(InceptionI3d(), load_state_dict(path), path)
        if name == "vggish":
            from mmdisco.metrics.vggish import VGGish

            return self._loaded(VGGish(), load_state_dict(path), path)
        if name == "panns_cnn14_16k":
            from mmdisco.metrics.panns import Cnn14

            return self._loaded(Cnn14(), load_state_dict(path), path)
        if name == "audioclip":
            from mmdisco.metrics.audioclip import AudioCLIPAudio

            state = load_state_dict(path)
            audio = {k[6:]: v for k, v in state.items() if k.startswith("audio.")}
            return self._loaded(AudioCLIPAudio(), audio or state, path)  # full model or branch
        if name == "imagebind":
            from mmdisco.metrics.imagebind import ImageBind, ImageBindConfig, select_state

            with torch.device("meta"):  # 1.1B parameters: no random init, the file's tensors
                net = ImageBind(ImageBindConfig(**(self.cfg.imagebind or {})))
            return self._loaded(net, select_state(load_state_dict(path)), path, assign=True)
        if name == "synchformer":
            from mmdisco.metrics.synchformer import Synchformer, SynchformerConfig

            with torch.device("meta"):  # 237M parameters: no random init, the file's tensors
                net = Synchformer(SynchformerConfig(**(self.cfg.synchformer or {})))
            return self._loaded(net, load_state_dict(path), path, assign=True)
        if name == "imagebind_bpe":
            from mmdisco.metrics.imagebind_data import BPETokenizer

            return BPETokenizer(path)
        if name == "clap":
            from mmdisco.metrics.clap import ClapScorer

            return ClapScorer(path, self.device)
        raise KeyError(name)

    # -- features ----------------------------------------------------------------------------
    def _bar(self, items, desc: str):
        return tqdm(items, desc=desc, disable=not self.cfg.progress, leave=False)

    def _frames(self, path: Path, num_frames: int) -> np.ndarray:
        """The first num_frames frames (at video_fps when set); too short a clip is an error."""
        frames = read_video_with_audio(path, fps=self.cfg.video_fps)[0][:num_frames]
        if len(frames) < num_frames:
            raise ValueError(
                f"{path}: {len(frames)} frames, FVD needs {num_frames} (clips are never padded)"
            )
        return frames

    @torch.no_grad()
    def _i3d400(self, paths: list[Path]) -> np.ndarray:
        from mmdisco.metrics.i3d import NUM_FRAMES, preprocess_videogpt

        net, out = self.network("i3d400"), []
        for batch in self._bar(list(_batches(paths, self.cfg.batch_size)), "I3D (videogpt)"):
            clips = [preprocess_videogpt(self._frames(p, NUM_FRAMES)[None]) for p in batch]
            out.append(net(torch.cat(clips).to(self.device)).float().cpu())
        return torch.cat(out).numpy()

    def _stylegan_v(self, paths: list[Path]) -> np.ndarray:
        from mmdisco.metrics.stylegan_v import NUM_FRAMES, clip_tensor, detector_features

        net, out = self.network("i3d_torchscript"), []
        for batch in self._bar(list(_batches(paths, self.cfg.batch_size)), "I3D (stylegan-v)"):
            clips = [clip_tensor(self._frames(p, NUM_FRAMES)) for p in batch]
            out.append(detector_features(net, clips, self.device))
        return torch.cat(out).numpy()

    @torch.no_grad()
    def _vggish(self, paths: list[Path]) -> np.ndarray:
        from mmdisco.metrics.vggish import SAMPLE_RATE, log_mel_examples

        net, out = self.network("vggish"), []
        for p in self._bar(paths, "VGGish"):
            _, _, audio, sr = read_video_with_audio(p, mono=True)
            examples = log_mel_examples(resample_audio(audio, sr, SAMPLE_RATE))
            x = torch.from_numpy(examples).float()[:, None].to(self.device)
            out.append(net(x).float().cpu())
        return torch.cat(out).numpy()  # every 0.96 s example of every clip is one sample

    @torch.no_grad()
    def _panns(self, paths: list[Path]) -> np.ndarray:
        from mmdisco.metrics.panns import prepare

        net, out = self.network("panns_cnn14_16k"), []
        for p in self._bar(paths, "PANNs"):  # one clip at a time: lengths differ
            _, _, audio, sr = read_video_with_audio(p)
            x = torch.from_numpy(prepare(audio, sr))[None].to(self.device)
            out.append(net(x).float().cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def _audioclip(self, paths: list[Path]) -> np.ndarray:
        from mmdisco.metrics.audioclip import prepare

        net, out = self.network("audioclip"), []
        for batch in self._bar(list(_batches(paths, self.cfg.batch_size)), "AudioCLIP"):
            clips = [read_video_with_audio(p) for p in batch]
            x = torch.from_numpy(np.stack([prepare(c[2], c[3]) for c in clips]))
            out.append(net(x.to(self.device)).float().cpu())  # raw, unnormalised (MM-Diffusion)
        return torch.cat(out).numpy()

    def features(self, protocol: str, paths: list[Path]) -> np.ndarray:
        network = PROTOCOLS[protocol][1]
        compute = {"i3d400": self._i3d400, "i3d_torchscript": self._stylegan_v,
                   "vggish": self._vggish, "panns_cnn14_16k": self._panns,
                   "audioclip": self._audioclip}[network]  # fmt: skip

        def run():
            with full_fp32():
                return compute(paths)

        fps = self.cfg.video_fps if network in ("i3d400", "i3d_torchscript") else None
        return self.cache.get(network + (f"@{fps}fps" if fps else ""), paths, run)

    # -- per-clip scores ---------------------------------------------------------------------
    def _clap(self, paths: list[Path]) -> np.ndarray:
        from mmdisco.metrics.clap import read_prompts

        prompts = read_prompts(paths[0].parent)
        missing = [p.name for p in paths if p.name not in prompts]
        if missing:
            raise KeyError(f"prompts.csv of {paths[0].parent} has no prompt for {missing[:3]}")
        scorer, scores = self.network("clap"), []
        for batch in self._bar(list(_batches(paths, self.cfg.batch_size)), "CLAP"):
            clips = [read_video_with_audio(p, mono=True) for p in batch]
            audios = [scorer.prepare_audio(c[2], c[3]) for c in clips]
            texts = [prompts[p.name] for p in batch]
            scores.append(scorer.scores(audios, scorer.sample_rate, texts))
        return np.concatenate(scores)

    @torch.no_grad()
    def _imagebind(self, paths: list[Path], pairs: list[tuple]) -> dict[tuple, np.ndarray]:
        """Per-clip cosine similarities of embedding pairs: ("v", "a"), ("t", "v"), ("t", "a")."""
        from mmdisco.metrics import imagebind_data as D

        net = self.network("imagebind")
        prompts = None
        if any("t" in p for p in pairs):
            from mmdisco.metrics.clap import read_prompts

            prompts, tokenizer = read_prompts(paths[0].parent), self.network("imagebind_bpe")
        scores = {p: [] for p in pairs}
        for batch in self._bar(list(_batches(paths, self.cfg.batch_size)), "ImageBind"):
            clips = [read_video_with_audio(p) for p in batch]
            emb = {}
            with full_fp32():
                if any("v" in p for p in pairs):
                    x = torch.stack([D.video_clips(c[0], c[1]) for c in clips]).to(self.device)
                    emb["v"] = net.embed("vision", x).float().cpu()
                if any("a" in p for p in pairs):
                    x = torch.stack([D.audio_clips(c[2], c[3]) for c in clips]).to(self.device)
                    emb["a"] = net.embed("audio", x).float().cpu()
                if prompts is not None:
                    ids = tokenizer([prompts[p.name] for p in batch]).to(self.device)
                    emb["t"] = net.embed("text", ids).float().cpu()
            for p in pairs:
                cos = torch.nn.functional.cosine_similarity(emb[p[0]], emb[p[1]], dim=-1)  # (B,)
                scores[p].append(cos.double().numpy())
        return {p: np.concatenate(s) for p, s in scores.items()}

    def _av_align(self, paths: list[Path], variants: list[str]) -> dict[str, np.ndarray]:
        from mmdisco.metrics import av_align as A

        scores = {v: [] for v in variants}
        for p in self._bar(paths, "AV-Align"):
            frames, fps, audio, sr = read_video_with_audio(p, mono=True)
            trajectory = A.flow_trajectory(frames)  # shared by the variants
            for v in variants:
                q = A.protocol(v)
                audio_peaks = A.detect_audio_peaks(audio, sr, q.sample_rate, q.hop_length)
                video_peaks = A.local_peaks(trajectory, fps, q.threshold)
                scores[v].append(A.peak_iou(audio_peaks, video_peaks, fps, q.one_to_one))
        return {v: np.asarray(s) for v, s in scores.items()}

    @torch.no_grad()
    def _desync(self, paths: list[Path]) -> np.ndarray:
        """Per clip: the mean |offset| (s) Synchformer predicts on its first and last 4.8 s."""
        from mmdisco.metrics.synchformer import desync_of_logits, prepare_clip

        net, scores = self.network("synchformer"), []
        for p in self._bar(paths, "Synchformer"):  # one clip at a time: 14-24 segments each
            frames, fps, audio, sr = read_video_with_audio(p, mono=True)
            video, mel = prepare_clip(frames, fps, audio, sr, self.cfg.desync_seconds, str(p))
            with full_fp32():
                logits = net.window_logits(video.to(self.device), mel.to(self.device),
                                           chunk=self.cfg.batch_size)  # fmt: skip
            scores.append(desync_of_logits(logits))
        return np.asarray(scores)

    # -- folders -----------------------------------------------------------------------------
    def evaluate(
        self,
        folder: str | os.PathLike,
        metrics,
        reference: str | os.PathLike | None = None,
    ) -> dict[str, float]:
        """{protocol: value} of the mp4s in folder (against reference's where a metric has one)."""
        protocols = resolve_metrics(metrics)
        paths = list_clips(folder)
        needs_ref = [p for p in protocols if PROTOCOLS[p][0] != "per-clip"]
        if needs_ref and reference is None:
            raise ValueError(f"{needs_ref} compare against real clips: pass reference=REAL_DIR")
        ref_paths = list_clips(reference) if needs_ref else []
        out: dict[str, float] = {}
        for p in protocols:
            kind = PROTOCOLS[p][0]
            if kind == "per-clip":
                continue
            fake, real = self.features(p, paths), self.features(p, ref_paths)
            if kind == "kvd":
                out[p] = polynomial_mmd(fake, real)
            else:  # fd-<method>[-x<scale>]
                _, method, *scale = kind.split("-")
                fd = frechet_distance_features(fake, real, method=method)
                out[p] = fd * (float(scale[0][1:]) if scale else 1.0)
        if "clap/laion-clap" in protocols:
            out["clap/laion-clap"] = float(np.mean(self._clap(paths)))
        ib = [p for p in protocols if p in IB_PAIRS]
        if ib:
            scores = self._imagebind(paths, [IB_PAIRS[p] for p in ib])
            out.update({p: float(np.mean(scores[IB_PAIRS[p]])) for p in ib})
        if "desync/synchformer-avbench" in protocols:
            out["desync/synchformer-avbench"] = float(np.mean(self._desync(paths)))
        variants = [p.split("/")[1] for p in protocols if p.startswith("av_align/")]
        if variants:
            for v, s in self._av_align(paths, variants).items():
                out[f"av_align/{v}"] = float(np.mean(s))
        return {p: out[p] for p in protocols}
