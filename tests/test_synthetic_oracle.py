"""The synthetic world's exact density ratio (``SyntheticOracle``), checked against the direct
sums of Gaussian densities over every clip of the world and on rendered pairs."""

import math

import numpy as np
import pytest
import torch
from tiny_pair_bases import synthetic_bases

from mmdisco.data.synthetic import render_audio, render_video
from mmdisco.discriminator.synthetic_oracle import SyntheticOracle


@pytest.fixture(scope="module")
def oracle():
    return SyntheticOracle(synthetic_bases())


def direct_log_ratio(oracle, audio, video, t):
    """log q(a, v) - log q(a) - log q(v) from the full Gaussian log densities (float64):
    q(a, v) = sum_{k,o,c} pi N(a; alpha A_ko) N(v; alpha V_koc), q(a) and q(v) its marginals."""
    out = []
    for i in range(audio.shape[0]):
        ta = int(t[i])
        (aa, sa), (av, sv) = (oracle.schedules[m].coefficients(torch.tensor([ta])) for m in
                              ("audio", "video"))  # fmt: skip
        a, v = audio[i].flatten().double(), video[i].flatten().double()
        ta_, tv_ = oracle.audio_templates.double(), oracle.video_templates.double()
        la = -((a - aa.double() * ta_) ** 2).sum(1) / (2 * sa.double() ** 2)
        lv = -((v - av.double() * tv_) ** 2).sum(1) / (2 * sv.double() ** 2)
        lv = lv.view(oracle.num_params, oracle.num_centres)  # [(k, o), c]
        n_c, n_p = oracle.num_centres, oracle.num_params
        log_joint = (la[:, None] + lv).flatten().logsumexp(0) - math.log(n_p * n_c)
        log_a = la.logsumexp(0) - math.log(n_p)
        log_v = lv.flatten().logsumexp(0) - math.log(n_p * n_c)
        out.append((log_joint - log_a - log_v).item())
    return torch.tensor(out, dtype=torch.float64)


def world_pairs(params, swap=None):
    video = np.stack([render_video(k, o, c) for k, o, c in params])
    audio = np.stack([render_audio(*(swap[i] if swap else (k, o))) for i, (k, o, _) in
                      enumerate(params)])  # fmt: skip
    return audio, video


def test_the_logit_is_the_log_density_ratio_of_the_world(oracle):
    bases = synthetic_bases()
    params = [(0, 2, (10, 12)), (3, 5, (20, 7)), (1, 1, (6, 25))]
    audio, video = world_pairs(params, swap=[(0, 2), (2, 5), (1, 4)])  # real, class, onset
    a0, v0 = bases["audio"].encode(audio), bases["video"].encode(video)
    g = torch.Generator().manual_seed(0)
    for t_value in (300, 550, 800):
        t = torch.full((3,), t_value)
        a_t = bases.schedules["audio"].add_noise(a0, torch.randn(a0.shape, generator=g), t)
        v_t = bases.schedules["video"].add_noise(v0, torch.randn(v0.shape, generator=g), t)
        got = oracle(a_t, v_t, t).squeeze(1).double()
        torch.testing.assert_close(got, direct_log_ratio(oracle, a_t, v_t, t), atol=1e-4,
                                   rtol=1e-4)  # fmt: skip


def test_it_knows_the_pairing_at_low_noise_and_nothing_at_the_end(oracle):
    bases = synthetic_bases()
    params = [(k, o, (15, 15)) for k in range(4) for o in (1, 4)]
    swaps = [((k + 1) % 4, o) for k, o, _ in params]
    a_real, video = world_pairs(params)
    a_swap, _ = world_pairs(params, swap=swaps)
    v0 = bases["video"].encode(video)
    enc = bases["audio"].encode
    for t_value, check in ((50, "sharp"), (999, "flat")):
        t = torch.full((len(params),), t_value)
        noise = torch.randn(v0.shape, generator=torch.Generator().manual_seed(1))
        v_t = bases.schedules["video"].add_noise(v0, noise, t)
        noise_a = torch.randn((len(params), 1, 64, 64), generator=torch.Generator().manual_seed(2))
        real = oracle(bases.schedules["audio"].add_noise(enc(a_real), noise_a, t), v_t, t)
        swap = oracle(bases.schedules["audio"].add_noise(enc(a_swap), noise_a, t), v_t, t)
        if check == "sharp":  # the true (k, o) is certain: logit log 24, a swapped class -inf-ish
            torch.testing.assert_close(real, torch.full_like(real, math.log(24)), atol=1e-3,
                                       rtol=0)  # fmt: skip
            assert (swap < -50).all()
        else:  # pure noise: the ratio is 1
            assert real.abs().max() < 0.05 and swap.abs().max() < 0.05
