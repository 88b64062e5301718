"""TwoStreamDiscriminator: every config in configs/discriminator, built tiny (same class, same
structural kwargs, fewer channels) for behaviour, full size on the meta device for counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmdisco.discriminator.two_stream import TwoStreamDiscriminator

torch.set_num_threads(1)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "discriminator"
TARGET = "mmdisco.discriminator.two_stream.TwoStreamDiscriminator"
CONFIGS = sorted(
    p.stem for p in CONFIG_DIR.glob("*.yaml") if OmegaConf.load(p).get("_target_") == TARGET
)
TINY = dict(channels=8, channel_mult=(1, 2), blocks_per_level=1, time_dim=16, norm_groups=4)
TINY_FUSION = dict(dim=16, out_dim=8, heads=2, head_dim=8, layers=2)

# exact counts of our modules; paper: 12.7M (IND, Table 8) and 132M (OOD, Table 6)
PARAMS = {
    "mmdiffusion_ind": 12_682_241,
    "released_mmdiffusion": 12_682_241,
    "released_audioldm_animatediff": 33_261_313,
    "released_auffusion_vc2": 38_972_161,
    "ood_audioldm_animatediff": 132_582_913,
    "ood_audioldm_animatediff_transformer": 137_475_585,
    "ood_audioldm_animatediff_frieren": 137_213_185,
    "ood_auffusion_vc2": 132_704_769,
    "ood_auffusion_vc2_transformer": 137_597_441,
    "ood_auffusion_vc2_frieren": 137_335_041,
    "synthetic": 55_073,  # the synthetic world's small D (1-D audio stream, framewise head)
}


def config_kwargs(name: str) -> dict:
    kwargs = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    del kwargs["_target_"], kwargs["_convert_"]
    return kwargs


def shrunk(name: str, fusion: dict | None = None, **overrides) -> dict:
    """A config's keyword arguments with TINY widths, its fusion head shrunk and updated."""
    kwargs = {**config_kwargs(name), **TINY, **overrides}
    kwargs["fusion"] = {**kwargs["fusion"], **TINY_FUSION, **(fusion or {})}
    return kwargs


def tiny(name: str, fusion: dict | None = None, **overrides) -> TwoStreamDiscriminator:
    torch.manual_seed(0)
    return TwoStreamDiscriminator(**shrunk(name, fusion, **overrides))


def perturb(model: TwoStreamDiscriminator, scale: float = 0.1) -> TwoStreamDiscriminator:
    """Move every parameter off its init (zero-init convs included), as after training."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def inputs(model: TwoStreamDiscriminator, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a_ch = model.audio_stream.stem.in_channels
    v_ch = model.video_stream.stem
    v_ch = v_ch.spatial.in_channels if hasattr(v_ch, "spatial") else v_ch.in_channels
    one_d = isinstance(model.audio_stream.stem, torch.nn.Conv1d)
    audio = torch.randn((batch, a_ch, 256) if one_d else (batch, a_ch, 6, 8), generator=g)
    video = torch.randn(batch, v_ch, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    cond = {}
    for m, proj in (("audio", model.audio_text_proj), ("video", model.video_text_proj)):
        if proj is not None:
            cond[m] = torch.randn(batch, proj.in_features, generator=g)
    return audio, video, t, cond or None


def input_grads(model, audio, video, t, cond, create_graph=False):
    audio, video = audio.clone().requires_grad_(True), video.clone().requires_grad_(True)
    logit = model(audio, video, t, cond)
    ga, gv = torch.autograd.grad(logit.sum(), (audio, video), create_graph=create_graph)
    return logit, ga, gv


def test_configs_found():
    assert set(CONFIGS) == set(PARAMS)


@pytest.mark.parametrize("name", CONFIGS)
def test_full_size_parameter_count(name):
    with torch.device("meta"):
        model = instantiate(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    assert isinstance(model, TwoStreamDiscriminator)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_paper_parameter_counts_within_5_percent():
    assert abs(PARAMS["mmdiffusion_ind"] / 12.7e6 - 1) < 0.05  # Table 8, C = 128, N = 2
    assert abs(PARAMS["ood_audioldm_animatediff"] / 132e6 - 1) < 0.05  # Table 6


# Tables 8-9 (C, N) -> paper count; (128, 1) is printed as 19.0M there, out of line with the
# rest of the sweep (ours 6.36M, which is half of N = 2 as every other row), so it is left out.
SWEEP = {(32, 1): 401e3, (32, 2): 798e3, (32, 4): 1.6e6, (64, 2): 3.2e6, (128, 2): 12.7e6,
         (128, 4): 25.3e6, (256, 2): 50.7e6}  # fmt: skip


@pytest.mark.parametrize(("c", "n"), sorted(SWEEP))
def test_channel_depth_sweep_matches_paper(c, n):
    with torch.device("meta"):
        model = TwoStreamDiscriminator(
            **{**config_kwargs("mmdiffusion_ind"), "channels": c, "time_dim": c,
               "blocks_per_level": n}  # fmt: skip
        )
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / SWEEP[c, n] - 1) < 0.05


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_and_input_gradients(name):
    model = tiny(name)
    audio, video, t, cond = inputs(model, batch=3)
    logit, ga, gv = input_grads(model, audio, video, t, cond)
    assert logit.shape == (3,) and logit.dtype == torch.float32
    assert torch.isfinite(logit).all()
    assert ga.shape == audio.shape and gv.shape == video.shape
    assert ga.abs().sum(dim=tuple(range(1, ga.ndim))).min() > 0  # every sample, at init
    assert gv.abs().sum(dim=tuple(range(1, gv.ndim))).min() > 0


@pytest.mark.parametrize("name", CONFIGS)
def test_double_backward_reaches_every_part(name):
    model = perturb(tiny(name))
    audio, video, t, cond = inputs(model)
    _, ga, gv = input_grads(model, audio, video, t, cond, create_graph=True)
    (ga.square().mean() + gv.square().mean()).backward()  # an L_DSM-like loss on the gradients
    # biases that only shift the logit by a constant (e.g. the output's) get no gradient
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert len(grads) > 0.9 * len(list(model.parameters()))
    for part in ("time_mlp", "audio_stream", "video_stream", "head"):
        assert sum(g.norm() for n, g in grads.items() if n.startswith(part)) > 0, part


@pytest.mark.parametrize("name", CONFIGS)
def test_train_eval_agree_and_samples_are_independent(name):
    model = perturb(tiny(name))
    audio, video, t, cond = inputs(model, batch=3)
    with torch.no_grad():
        train = model.train()(audio, video, t, cond)
        evaluated = model.eval()(audio, video, t, cond)
        first = model(audio[:1], video[:1], t[:1], cond and {m: c[:1] for m, c in cond.items()})
    torch.testing.assert_close(train, evaluated)
    torch.testing.assert_close(first, evaluated[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_bfloat16_autocast(name):
    model = perturb(tiny(name))
    audio, video, t, cond = inputs(model)
    reference, _, _ = input_grads(model, audio, video, t, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logit, ga, gv = input_grads(model, audio, video, t, cond, create_graph=True)
        loss = ga.float().square().mean() + gv.float().square().mean()
    loss.backward()
    assert logit.dtype == torch.float32 and torch.isfinite(logit).all()
    assert torch.isfinite(ga).all() and torch.isfinite(gv).all() and gv.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    torch.testing.assert_close(logit, reference.detach(), rtol=0.1, atol=0.1)


@pytest.mark.parametrize(
    ("fusion", "hidden", "additive"),
    [("mlp", (), True), ("mlp", (32,), False), ("transformer", (), False),
     ("frieren", (), False)],
)  # fmt: skip
def test_only_the_linear_head_is_additive(fusion, hidden, additive):
    """With the official one-Linear head, logit = f(v) + g(a): grad_a ignores the video."""
    model = perturb(tiny("ood_auffusion_vc2", fusion={"kind": fusion, "mlp_hidden": hidden}))
    audio, video, t, cond = inputs(model)
    _, ga, _ = input_grads(model, audio, video, t, cond)
    _, ga_other_video, _ = input_grads(model, audio, video.flip(0), t, cond)
    assert torch.allclose(ga, ga_other_video, atol=1e-7) == additive


def test_text_condition_is_read_pooled_and_required():
    model = perturb(tiny("ood_audioldm_animatediff"))
    audio, video, t, cond = inputs(model)
    with torch.no_grad():
        logit = model(audio, video, t, cond)
        other = model(audio, video, t, {"audio": cond["audio"], "video": -cond["video"]})
        tokens = {m: torch.stack([c, c], dim=1) for m, c in cond.items()}  # (B, 2, D): mean = c
        pooled_here = model(audio, video, t, tokens)
    assert not torch.allclose(logit, other)
    torch.testing.assert_close(pooled_here, logit)
    with pytest.raises(ValueError, match="text-conditional"):
        model(audio, video, t, None)


def test_unconditional_model_ignores_cond():
    model = perturb(tiny("mmdiffusion_ind"))
    audio, video, t, _ = inputs(model)
    with torch.no_grad():
        plain = model(audio, video, t)
        given = model(audio, video, t, {"audio": torch.randn(2, 5), "video": torch.randn(2, 7)})
    torch.testing.assert_close(plain, given)


def test_timestep_changes_the_logit():
    model = perturb(tiny("mmdiffusion_ind"))
    audio, video, t, _ = inputs(model)
    with torch.no_grad():
        assert not torch.allclose(model(audio, video, t), model(audio, video, t + 100))


def test_3d_video_conv_and_frieren_with_longer_video():
    model = perturb(tiny("ood_auffusion_vc2_frieren", video_conv="3d"))
    audio, video, t, cond = inputs(model)
    video = torch.randn(2, 4, 8, 8, 8)  # 8 frames > 6 audio steps: audio is interpolated
    _, ga, gv = input_grads(model, audio, video, t, cond, create_graph=True)
    (ga.square().sum() + gv.square().sum()).backward()
    assert isinstance(model.video_stream.stem, torch.nn.Conv3d)
    assert gv.abs().sum() > 0 and ga.abs().sum() > 0


def test_too_many_tokens_is_an_error():
    model = tiny("released_auffusion_vc2", fusion={"max_tokens": 8})
    audio, video, t, cond = inputs(model)  # 2 + 4 + 6 = 12 tokens
    with pytest.raises(ValueError, match="max_tokens"):
        model(audio, video, t, cond)


def test_logit_eps_saturates_like_the_official_logit():
    model = perturb(tiny("mmdiffusion_ind"))
    audio, video, t, _ = inputs(model)
    with torch.no_grad():
        raw = model(audio, video, t)
        model.logit_eps = 1e-5
        saturated = model(audio, video, t)
        model.head.out.bias += 40.0
        far = model(audio, video, t)
    torch.testing.assert_close(saturated, raw, rtol=1e-3, atol=1e-3)
    assert (far < -torch.log(torch.tensor(1e-5)) + 1e-3).all()


# --- it can learn: real pairs have video = fixed function of audio; fakes are shuffled ---


def alignment_batch(n: int, g: torch.Generator, mixing: torch.Tensor):
    """Audio (n, 4, 8, 8) around a per-sample code z; video (n, 4, 4, 8, 8) around mixing @ z.

    Half the batch is real (aligned), half fake (video rolled by one sample). The marginals of
    audio and video are the same for both halves: only the pairing tells them apart.
    """
    audio = torch.randn(n, 4, 8, 8, generator=g)
    audio = audio + 2 * torch.randn(n, 4, 1, 1, generator=g)  # per-sample code z
    code = audio.mean((2, 3))  # (n, 4): the video is a fixed function of the audio
    video = (code @ mixing.T)[:, :, None, None, None] + torch.randn(n, 4, 4, 8, 8, generator=g)
    half = n // 2
    video = torch.cat([video[:half], video[half:].roll(1, dims=0)])
    label = torch.cat([torch.ones(half), torch.zeros(n - half)])
    return audio, video, torch.randint(0, 1000, (n,), generator=g), label


def train_alignment(
    model: TwoStreamDiscriminator, steps: int, lr: float = 3e-3, seed: int = 0
) -> float:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.linalg.qr(torch.randn(4, 4, generator=g))[0]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        audio, video, t, label = alignment_batch(32, g, mixing)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(audio, video, t), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    audio, video, t, label = alignment_batch(512, g, mixing)
    with torch.no_grad():
        return ((model(audio, video, t) > 0).float() == label).float().mean().item()


def small(**fusion) -> TwoStreamDiscriminator:
    no_text = {"channels": 16, "audio_text_dim": None, "video_text_dim": None}
    torch.manual_seed(0)
    return TwoStreamDiscriminator(**shrunk("ood_auffusion_vc2", fusion, **no_text))


def test_learns_alignment_with_an_mlp_head():
    assert train_alignment(small(mlp_hidden=(32,)), steps=100) > 0.9


def test_learns_alignment_with_a_framewise_head():
    assert train_alignment(small(kind="framewise", mlp_hidden=(32,)), steps=100) > 0.9


def test_framewise_head_needs_a_hidden_layer():
    with pytest.raises(ValueError, match="mlp_hidden"):
        small(kind="framewise", mlp_hidden=())


def test_linear_head_cannot_learn_alignment():
    """The control: the additive (official) head stays at chance on the same task."""
    assert train_alignment(small(), steps=100) < 0.65


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["transformer", "frieren"])
def test_learns_alignment_with_transformer_heads(fusion):
    assert train_alignment(small(kind=fusion), steps=400, lr=1e-3) > 0.9


def test_1d_audio_folds_spectrogram_frequencies_into_channels():
    """A (B, C, T, F) latent with audio_conv="1d" equals feeding (B, C * F, T) by hand."""
    torch.manual_seed(0)
    kw = dict(audio_channels=2 * 6, video_channels=3, audio_conv="1d", channels=8,
              channel_mult=(1,), blocks_per_level=1, norm_groups=4, time_dim=16,
              audio_down=2, fusion={"kind": "mlp", "mlp_hidden": (8,)})  # fmt: skip
    disc = TwoStreamDiscriminator(**kw).eval()
    for p in disc.parameters():  # zero-initialised layers would hide a wrong layout
        torch.nn.init.normal_(p, std=0.2)
    audio = torch.randn(2, 2, 10, 6)  # (B, C, T, F)
    video, t = torch.randn(2, 3, 4, 8, 8), torch.tensor([3, 700])
    by_hand = audio.permute(0, 1, 3, 2).reshape(2, 12, 10)  # (B, C * F, T)
    torch.testing.assert_close(disc(audio, video, t), disc(by_hand, video, t))
    # a frequency permutation changes the logit: bins are not pooled away
    assert not torch.allclose(disc(audio.flip(3), video, t), disc(audio, video, t))


@pytest.mark.parametrize("kind", ["framewise", "mlp"])
def test_index_pairs_score_like_the_gathered_pairs(kind):
    """forward(..., pairs=(ia, iv)) runs each stream once and the head per pair: the logits
    equal those of the explicitly gathered (audio[ia], video[iv]) at t[ia]."""
    model = perturb(tiny("synthetic", {"kind": kind})).eval()
    audio, video, _, _ = inputs(model, batch=4)
    t = torch.tensor([10, 10, 700, 700])
    ia, iv = torch.tensor([0, 0, 1, 2, 3, 3]), torch.tensor([0, 1, 0, 3, 2, 3])
    got = model(audio, video, t, None, pairs=(ia, iv))
    want = model(audio[ia], video[iv], t[ia])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])  # another video, another logit


def test_framewise_code_head_adds_the_log_ratio_of_a_shared_code():
    """kind=framewise_code: the framewise score + log sum_j p_a(j) p_v(j) J, p_m the softmax of
    a code each modality infers from its time-averaged features alone."""
    model = perturb(tiny("synthetic", {"kind": "framewise_code", "codes": 5})).eval()
    audio, video, t, _ = inputs(model, batch=3)
    head = model.head
    v, a, temb = model.streams(audio, video, t)
    code = head.code
    head.code = None
    framewise = head(v, a, temb)
    head.code = code
    la = code["audio"](a.mean(1)).log_softmax(1)
    lv = code["video"](v.mean(1)).log_softmax(1)
    want = framewise + torch.log((la.exp() * lv.exp()).sum(1) * 5)
    torch.testing.assert_close(head(v, a, temb), want, atol=1e-5, rtol=1e-5)
    assert code["audio"][-1].out_features == 5
    with pytest.raises(ValueError, match="codes must be >= 2"):
        tiny("synthetic", {"kind": "framewise_code", "codes": 1})
