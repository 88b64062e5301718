"""scripts/evaluate.py with the paper's suite on folders of mp4s: local weights (seeded, in the
real files' formats), protocol-named outputs equal to a direct computation, the feature cache,
and the one-line error for missing weights."""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np
import pytest
import torch
from script_runner import script
from seeded_weights import load_manifest, seeded_state_dict
from tiny_eval_components import save_tiny_clap

from mmdisco.media import read_video_with_audio, write_video_with_audio
from mmdisco.metrics.frechet import frechet_distance_features, polynomial_mmd
from mmdisco.metrics.i3d import InceptionI3d, preprocess_videogpt
from mmdisco.metrics.suite import MetricSuite, SuiteConfig, resolve_metrics
from mmdisco.metrics.vggish import VGGish, log_mel_examples
from mmdisco.metrics.weights import load_into

SETS = {"reference": (3, 0), "unguided": (2, 1), "guided": (2, 2)}  # clips, seed


def _write_set(folder, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        t = np.arange(16)[:, None, None, None]
        frames = (rng.integers(0, 200, (1, 32, 32, 3)) + 3 * t * (seed + 1)).clip(0, 255)
        audio = 0.3 * np.sin(2 * np.pi * (200 + 100 * seed + 50 * i) * np.arange(32_000) / 16_000)
        audio[8_000 * (i + 1) : 8_000 * (i + 1) + 400] += 0.5  # a click: an onset
        write_video_with_audio(folder / f"{i:05d}.mp4", frames.astype(np.uint8), 8,
                               audio.astype(np.float32), 16_000)  # fmt: skip
    (folder / "prompts.csv").write_text(
        "file,prompt\n" + "".join(f"{i:05d}.mp4,a tone {i}\n" for i in range(n))
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    for name, (n, seed) in SETS.items():
        _write_set(root / name, n, seed)
    weights = root / "weights"
    weights.mkdir()
    i3d = seeded_state_dict(load_manifest("i3d400_keys.json"))
    torch.save({k: v for k, v in i3d.items() if "num_batches" not in k},
               weights / "i3d_pretrained_400.pt")  # fmt: skip
    torch.save(
        seeded_state_dict(load_manifest("vggish_keys.json")), weights / "vggish-10086976.pth"
    )
    save_tiny_clap(weights / "clap-htsat-unfused")
    return root


def _direct_features(root):
    """The same features by direct calls to the networks (no suite, no cache)."""
    i3d = InceptionI3d().eval()
    load_into(i3d, seeded_state_dict(load_manifest("i3d400_keys.json")), "i3d")
    vgg = VGGish().eval()
    load_into(vgg, seeded_state_dict(load_manifest("vggish_keys.json")), "vggish")
    out = {}
    for name in SETS:
        clips = [read_video_with_audio(p, mono=True) for p in sorted((root / name).glob("*.mp4"))]
        video = np.stack([c[0][:16] for c in clips])
        with torch.no_grad():
            logits = i3d(preprocess_videogpt(video)).numpy()
            ex = np.concatenate([log_mel_examples(c[2]) for c in clips])
            emb = vgg(torch.from_numpy(ex).float()[:, None]).numpy()
        out[name] = (logits, emb)
    return out


def test_evaluate_script_with_the_suite(setup, tmp_path):
    root = setup
    args = [
        f"run_dir={root}", "samples=[unguided,guided]", f"reference={root / 'reference'}",
        "metrics=[fvd,kvd,fad,clap,av_align]", f"weights_dir={root / 'weights'}",
        f"cache_dir={tmp_path / 'cache'}", "progress=false", "batch_size=2",
    ]  # fmt: skip
    out = script("evaluate.py", *args).stdout
    # the reference set is embedded once: guided reuses unguided's reference features, and
    # KVD reuses FVD's I3D features (unguided: 2 hits; guided: 3 for I3D, 1 for VGGish)
    assert "features reused" in out and ": 6 file list(s)" in out, out
    header = next(line for line in out.splitlines() if line.split() == ["unguided", "guided"])
    assert header
    for key in resolve_metrics(["fvd", "kvd", "fad", "clap", "av_align"]):
        assert any(line.startswith(key) for line in out.splitlines()), (key, out)
    results = json.loads((root / "evaluation.json").read_text())
    assert results["guided"] == json.loads((root / "guided_metrics.json").read_text())
    direct = _direct_features(root)
    for name in ("unguided", "guided"):
        r = results[name]
        fake, real = direct[name], direct["reference"]
        assert r["fvd/videogpt-i3d400"] == pytest.approx(
            frechet_distance_features(fake[0], real[0], method="svd"), rel=1e-3
        )
        assert r["kvd/videogpt-i3d400"] == pytest.approx(polynomial_mmd(fake[0], real[0]), rel=1e-3)
        assert r["fad/vggish"] == pytest.approx(
            frechet_distance_features(fake[1], real[1]), rel=1e-3
        )
        assert -1 <= r["clap/laion-clap"] <= 1
        assert 0 <= r["av_align/tempotokens-2025"] <= 1 and r["av_align/mmdisco-a10.1"] >= 0
    assert (root / "report.html").exists() and (root / "evaluation.md").exists()
    assert (root / "evaluation.png").exists()
    # second run: every lookup hits (2 folders x 2 networks x (samples, reference))
    again = script("evaluate.py", *args, "metrics=[fvd,fad]").stdout
    assert "features reused" in again and ": 8 file list(s)" in again, again
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 6


def test_missing_weights_is_one_clear_error(setup, tmp_path):
    suite = MetricSuite(SuiteConfig(weights_dir=str(tmp_path), cache_dir=None, progress=False))
    with pytest.raises(FileNotFoundError) as err:
        suite.evaluate(setup / "guided", ["fvd"], reference=setup / "reference")
    msg = str(err.value)
    assert "i3d_pretrained_400.pt" in msg and "drive.google.com" in msg and str(tmp_path) in msg
    proc = script("evaluate.py", f"run_dir={setup}", "samples=[guided]", "metrics=[fad]",
                  f"reference={setup / 'reference'}", "report=false", check=False)  # fmt: skip
    assert proc.returncode != 0 and "vggish-10086976.pth" in proc.stderr
    assert "harritaylor/torchvggish/releases" in proc.stderr


def test_aliases_and_unknown_metrics():
    assert resolve_metrics(["fvd", "fvd/videogpt-i3d400", "fvd_stylegan"]) == [
        "fvd/videogpt-i3d400",
        "fvd/stylegan-v",
    ]
    assert resolve_metrics(["desync"]) == ["desync/synchformer-avbench"]
    assert resolve_metrics(["fad_audioclip", "fd_panns"]) == [
        "fad/audioclip-mmdiffusion",
        "fd/panns-cnn14-16k",
    ]
    with pytest.raises(ValueError, match="unknown metric"):
        resolve_metrics(["fid"])


class _DetectorStandIn(torch.nn.Module):
    """TorchScript stand-in with the StyleGAN-V detector's call signature: it checks the input
    contract (uint8 (B, 3, 16, H, W), the three flags set) and returns 1-d features (the clip
    mean, well conditioned with 2-3 clips)."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        if x.dtype != torch.uint8 or x.shape[1] != 3 or x.shape[2] != 16:
            raise ValueError("expected uint8 (B, 3, 16, H, W)")
        if not (rescale and resize and return_features):
            raise ValueError("expected rescale, resize and return_features")
        return x.float().mean(dim=(1, 2, 3, 4))[:, None]  # (B, 1)


def test_stylegan_v_protocol_feeds_the_torchscript_detector(setup, tmp_path):
    torch.jit.script(_DetectorStandIn()).save(str(tmp_path / "i3d_torchscript.pt"))
    suite = MetricSuite(SuiteConfig(weights_dir=str(tmp_path), cache_dir=None, progress=False))
    got = suite.evaluate(setup / "guided", ["fvd_stylegan"], reference=setup / "reference")

    def feats(name):
        clips = [read_video_with_audio(p)[0][:16] for p in sorted((setup / name).glob("*.mp4"))]
        return np.array([[c.astype(np.float64).mean()] for c in clips])

    expected = frechet_distance_features(feats("guided"), feats("reference"), method="sqrtm")
    assert list(got) == ["fvd/stylegan-v"]
    assert got["fvd/stylegan-v"] == pytest.approx(expected, rel=1e-6)


def test_imagebind_scores_through_the_suite(setup, tmp_path):
    """IB-AV / IB-TV / IB-TA from the files equal cosines of the model's own embeddings of the
    pipeline's inputs (the model and the pipeline are checked against the reference apart)."""
    from test_metrics_imagebind import CONSTANTS, TINY

    from mmdisco.metrics import imagebind_data as D
    from mmdisco.metrics.imagebind import ImageBind

    net = ImageBind(TINY).eval()
    manifest = {k: list(v.shape) for k, v in net.state_dict().items() if k not in CONSTANTS}
    state = {**seeded_state_dict(manifest, seed=3), **{k: net.state_dict()[k] for k in CONSTANTS}}
    torch.save(
        {**state, "modality_trunks.depth.blocks.0.norm_1.weight": torch.ones(2)},
        tmp_path / "imagebind_huge.pth",
    )  # fmt: skip  (other modalities are ignored)
    with gzip.open(tmp_path / "bpe_simple_vocab_16e6.txt.gz", "wt") as f:
        f.write("#version: tiny\nt o\nto n\nton e</w>\n")
    tiny = dataclasses.asdict(TINY)
    suite = MetricSuite(SuiteConfig(weights_dir=str(tmp_path), cache_dir=None, progress=False,
                                    imagebind=tiny, batch_size=1))  # fmt: skip
    got = suite.evaluate(setup / "guided", ["ib"])
    assert list(got) == ["ib_av/imagebind-huge", "ib_tv/imagebind-huge", "ib_ta/imagebind-huge"]
    load_into(net, state, "tiny")
    paths = sorted((setup / "guided").glob("*.mp4"))
    clips = [read_video_with_audio(p) for p in paths]
    tok = D.BPETokenizer(tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    with torch.no_grad():
        v = net.embed("vision", torch.stack([D.video_clips(c[0], c[1]) for c in clips]))
        a = net.embed("audio", torch.stack([D.audio_clips(c[2], c[3]) for c in clips]))
        t = net.embed("text", tok([f"a tone {i}" for i in range(len(paths))]))
    cos = torch.nn.functional.cosine_similarity
    for key, (x, y) in {"ib_av": (v, a), "ib_tv": (t, v), "ib_ta": (t, a)}.items():
        assert got[f"{key}/imagebind-huge"] == pytest.approx(float(cos(x, y).mean()), rel=1e-4)


def test_too_short_clips_and_video_fps(setup, tmp_path):
    """A clip with fewer than 16 frames is refused by name; video_fps resamples before the cut
    (and is part of the cache key)."""
    short = tmp_path / "short"
    write_video_with_audio(short / "00000.mp4", np.zeros((8, 32, 32, 3), np.uint8), 8,
                           np.zeros(16_000, np.float32), 16_000)  # fmt: skip
    torch.jit.script(_DetectorStandIn()).save(str(tmp_path / "i3d_torchscript.pt"))
    cfg = dict(weights_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), progress=False)
    suite = MetricSuite(SuiteConfig(**cfg))
    with pytest.raises(ValueError, match=r"00000.mp4: 8 frames, FVD needs 16"):
        suite.features("fvd/stylegan-v", [short / "00000.mp4"])
    # 16 frames at 8 fps read at 16 fps: 32 frames, each repeated; the first 16 cover 1 s
    paths = sorted((setup / "guided").glob("*.mp4"))
    fast = MetricSuite(SuiteConfig(**cfg, video_fps=16)).features("fvd/stylegan-v", paths)
    frames = [read_video_with_audio(p, fps=16)[0][:16] for p in paths]
    np.testing.assert_allclose(fast[:, 0], [f.astype(np.float64).mean() for f in frames], rtol=1e-6)
    native = suite.features("fvd/stylegan-v", paths)
    assert not np.allclose(native, fast) and len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_panns_features_through_the_suite(setup, tmp_path):
    """fd/panns-cnn14-16k's features from a PANNs-style checkpoint ({"model": state}) equal the
    network's own embeddings of the prepared audio (the FD of 2048-d features is the same code
    path as fad/vggish's, and costs seconds per sqrtm: not repeated here)."""
    from mmdisco.metrics.panns import Cnn14, prepare

    net = Cnn14().eval()
    front = ("spectrogram_extractor", "logmel_extractor")
    manifest = {k: list(v.shape) for k, v in net.state_dict().items() if not k.startswith(front)}
    state = {**net.state_dict(), **seeded_state_dict(manifest, seed=4)}
    torch.save({"model": state, "epoch": 0}, tmp_path / "Cnn14_16k_mAP=0.438.pth")
    suite = MetricSuite(SuiteConfig(weights_dir=str(tmp_path), cache_dir=None, progress=False))
    paths = sorted((setup / "guided").glob("*.mp4"))
    got = suite.features(resolve_metrics(["fd_panns"])[0], paths)
    load_into(net, state, "cnn14")
    clips = [read_video_with_audio(p) for p in paths]
    with torch.no_grad():
        expected = [net(torch.from_numpy(prepare(c[2], c[3]))[None])[0].numpy() for c in clips]
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-5)


def test_audioclip_fad_through_the_suite(setup, tmp_path):
    """fad/audioclip-mmdiffusion from a full AudioCLIP checkpoint (audio.* entries) equals 1e4
    times the TF-GAN-form FD of the branch's raw embeddings of the prepared audio."""
    from mmdisco.metrics.audioclip import AudioCLIPAudio, prepare

    net = AudioCLIPAudio().eval()
    keep = ("window", "fbsp.bias", "fbsp.fc")
    manifest = {k: list(v.shape) for k, v in net.state_dict().items() if k not in keep}
    state = {**net.state_dict(), **seeded_state_dict(manifest, seed=5)}
    full = {f"audio.{k}": v for k, v in state.items()}
    full["visual.conv1.weight"] = torch.zeros(1)  # CLIP's entries are ignored
    torch.save(full, tmp_path / "AudioCLIP-Full-Training.pt")
    suite = MetricSuite(SuiteConfig(weights_dir=str(tmp_path), cache_dir=None, progress=False))
    got = suite.evaluate(setup / "guided", ["fad_audioclip"], reference=setup / "reference")
    load_into(net, state, "audioclip")

    def emb(name):
        clips = [read_video_with_audio(p) for p in sorted((setup / name).glob("*.mp4"))]
        with torch.no_grad():
            return net(torch.from_numpy(np.stack([prepare(c[2], c[3]) for c in clips]))).numpy()

    expected = 1e4 * frechet_distance_features(emb("guided"), emb("reference"), method="svd")
    assert got == {"fad/audioclip-mmdiffusion": pytest.approx(expected, rel=1e-4)}


def test_desync_through_the_suite(setup, tmp_path):
    """desync/synchformer-avbench from synchformer_state_dict.pth (a tiny seeded one) equals the
    mean over clips of the network's own windows on the prepared clips (network and pipeline
    are checked against av-benchmark apart); 2 s clips are refused by name, never padded."""
    from test_metrics_desync import GOLDEN, TINY, tiny_model

    from mmdisco.metrics import synchformer as S

    clips = tmp_path / "clips"
    rng = np.random.default_rng(7)
    for i in range(2):  # 6 s at 8 fps: 150 frames at 25 fps, 17 segments, two distinct windows
        frames = rng.integers(0, 256, (48, 32, 40, 3), dtype=np.uint8)
        audio = 0.3 * rng.standard_normal(6 * 16_000).astype(np.float32)
        write_video_with_audio(clips / f"{i:05d}.mp4", frames, 8, audio, 16_000)
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(seeded_state_dict(GOLDEN["tiny_keys"], seed=0),
               weights / "synchformer_state_dict.pth")  # fmt: skip
    cfg = dict(weights_dir=str(weights), cache_dir=None, progress=False,
               synchformer=dataclasses.asdict(TINY), batch_size=4)  # fmt: skip
    suite = MetricSuite(SuiteConfig(**cfg))
    got = suite.evaluate(clips, ["desync"])
    assert list(got) == ["desync/synchformer-avbench"]
    net, expected = tiny_model(), []
    for p in sorted(clips.glob("*.mp4")):
        video, mel = S.prepare_clip(*read_video_with_audio(p, mono=True))
        assert len(video) == 17
        with torch.no_grad():
            expected.append(S.desync_of_logits(net.window_logits(video, mel)))
    assert got["desync/synchformer-avbench"] == pytest.approx(np.mean(expected), abs=1e-9)
    assert 0 <= got["desync/synchformer-avbench"] <= 2
    with pytest.raises(ValueError, match=r"00000\.mp4: DeSync needs at least 4\.8 s") as err:
        suite.evaluate(setup / "guided", ["desync"])  # 2 s clips
    assert "50 frames at 25 fps" in str(err.value) and "never padded" in str(err.value)
