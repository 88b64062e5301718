import math

import pytest
import torch
from torch import nn

from mmdisco import IndependentBases, JointLoss
from mmdisco.bases.protocol import DiffusionBase
from mmdisco.schedule import NoiseSchedule


class ZeroBase(DiffusionBase):
    def __init__(self):
        super().__init__()
        self.schedule = NoiseSchedule.ddpm("linear", 100, 1e-4, 0.02)

    def model_output(self, x_t, t, emb):
        return torch.zeros_like(x_t)

    def sample_shape(self, b):
        return (b, 1)


class ConstantD(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.b = nn.Parameter(torch.tensor(float(value)))

    def forward(self, audio, video, t, cond=None):
        return self.b + 0 * (audio.sum(1) + video.sum(1))


class ProductD(nn.Module):
    """logit = w * a * v: its parameter reaches L_DSM only through d logit / d input."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.7))

    def forward(self, audio, video, t, cond=None):
        return self.w * (audio * video).sum(1)


def pairs(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(n, 1, generator=g), "video": torch.randn(n, 1, generator=g)}


@pytest.fixture
def bases():
    b = ZeroBase()
    return IndependentBases(audio=b, video=b)


def test_bce_terms_equal_hand_computed_values(bases):
    out = JointLoss(bce=True, lambda_dsm=0)(ConstantD(0.5), bases, pairs(8, 0), pairs(8, 1))
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    assert out["l_d"].item() == pytest.approx(
        sp(-0.5) + sp(0.5), rel=1e-6
    )  # -log D(real) - log(1-D(fake))
    assert out["loss"].item() == pytest.approx(out["l_d"].item())
    assert out["acc_real"].item() == 1.0 and out["acc_fake"].item() == 0.0


def test_dsm_with_zero_discriminator_is_the_noise_energy(bases):
    # eps_base = 0 and r = 0, so L_DSM = E|noise_a|^2 + E|noise_v|^2 = 2 (up to sampling error)
    out = JointLoss(bce=False, lambda_dsm=1.0)(ConstantD(0.0), bases, pairs(20000, 0), pairs(4, 1))
    assert out["l_dsm"].item() == pytest.approx(2.0, abs=0.05)
    assert out["loss"].item() == pytest.approx(out["l_dsm"].item())


def test_dsm_gradient_reaches_parameters_through_input_gradient(bases):
    """Autograd gradient of L_DSM w.r.t. w equals a finite difference with the same draws."""
    d, real, fake = ProductD(), pairs(64, 0), pairs(64, 1)
    loss = JointLoss(bce=False, lambda_dsm=2.0)

    def value(w):
        with torch.no_grad():
            d.w.fill_(w)
        return loss(d, bases, real, fake, generator=torch.Generator().manual_seed(5))["loss"]

    out = value(0.7)
    (grad,) = torch.autograd.grad(out, d.w)
    h = 1e-3
    fd = (value(0.7 + h).item() - value(0.7 - h).item()) / (2 * h)
    assert abs(grad.item()) > 1e-3
    assert grad.item() == pytest.approx(fd, rel=1e-3)


def test_switches_and_bad_values():
    assert JointLoss(bce=False, lambda_dsm=1.0).bce is False
    with pytest.raises(ValueError, match="trains nothing"):
        JointLoss(bce=False, lambda_dsm=0.0)
    with pytest.raises(ValueError, match="trains nothing"):
        JointLoss(bce=False, lambda_dsm=0.0, contrastive={"weight": 0.0, "group": 4})
    # the contrastive term alone is a loss (the synthetic world's recipe, README "Guidance")
    only_nce = JointLoss(bce=False, lambda_dsm=0.0, contrastive={"weight": 1.0, "group": 4})
    assert only_nce.contrastive["weight"] == 1.0
    with pytest.raises(ValueError, match="lambda_dsm"):
        JointLoss(lambda_dsm=-1.0)


def test_ld_only_does_not_touch_the_bases(bases):
    calls = []
    base = bases["audio"]
    original = base.model_output
    base.model_output = lambda *a: calls.append(1) or original(*a)
    JointLoss(bce=True, lambda_dsm=0.0)(ConstantD(0.1), bases, pairs(4, 0), pairs(4, 1))
    assert calls == []
    JointLoss(bce=True, lambda_dsm=1.0)(ConstantD(0.1), bases, pairs(4, 0), pairs(4, 1))
    assert calls  # L_DSM needs the base noise on real pairs


def test_t_power_skews_t_towards_low_noise_and_keeps_the_range():
    shapes = {"audio": (4000, 1), "video": (4000, 1)}
    g = torch.Generator().manual_seed(0)
    d_uniform = JointLoss().draw(1000, shapes, shapes, generator=g)
    d_skewed = JointLoss(t_power=2.0).draw(1000, shapes, shapes, generator=g)
    t_uniform = torch.cat([d_uniform.t_real, d_uniform.t_fake])
    t_skewed = torch.cat([d_skewed.t_real, d_skewed.t_fake])
    for t in (t_uniform, t_skewed):
        assert t.min() >= 0 and t.max() <= 999 and t.dtype == torch.long
    # P(t < 250) = 0.25 uniform, sqrt(0.25) = 0.5 with p = 2
    assert abs((t_uniform < 250).float().mean() - 0.25) < 0.02
    assert abs((t_skewed < 250).float().mean() - 0.5) < 0.02
    with pytest.raises(ValueError, match="t_power"):
        JointLoss(t_power=0.0)


# -- L_DSM reduction and negatives (issue 10) -------------------------------------------------
def test_dsm_sum_reduction_is_the_per_pair_squared_norm(bases):
    """With eps = 0 and r = 0, "sum" gives E||noise||^2 per pair = the element count per pair,
    "mean" the per-element energy 1, per modality."""
    real = {"audio": torch.zeros(4000, 3), "video": torch.zeros(4000, 5)}
    fake = {"audio": torch.zeros(2, 3), "video": torch.zeros(2, 5)}
    out = {}
    for red in ("mean", "sum"):
        loss = JointLoss(bce=False, dsm_reduction=red)
        out[red] = loss(
            ConstantD(0.0), bases, real, fake, generator=torch.Generator().manual_seed(0)
        )
    assert out["mean"]["l_dsm"].item() == pytest.approx(2.0, abs=0.05)
    assert out["sum"]["l_dsm"].item() == pytest.approx(3 + 5, abs=0.2)
    with pytest.raises(ValueError, match="dsm_reduction"):
        JointLoss(dsm_reduction="max")


def test_shift_time_holds_the_edge_frames_and_does_not_wrap():
    from mmdisco.loss import shift_time

    x = torch.arange(5.0).reshape(1, 1, 5, 1).repeat(3, 2, 1, 2)  # (B, C, F=5, W)
    out = shift_time(x, torch.tensor([1, -2, 0]), axis=2)
    assert out[0, 0, :, 0].tolist() == [0, 0, 1, 2, 3]  # later by 1: first frame held
    assert out[1, 1, :, 1].tolist() == [2, 3, 4, 4, 4]  # earlier by 2: last frame held
    assert torch.equal(out[2], x[2])


def test_negatives_replace_fake_pairs_by_mismatched_and_shifted_real_pairs(bases):
    from mmdisco.loss import make_negatives

    real = {
        "audio": torch.arange(4.0).reshape(4, 1, 1),
        "video": torch.arange(4.0).reshape(4, 1, 1).repeat(1, 1, 3) * 10 + torch.arange(3.0),
    }
    fake = {"audio": -torch.ones(8, 1, 1), "video": -torch.ones(8, 1, 3)}
    counts = JointLoss(negatives={"mismatch": 0.25, "shift": 0.5}).negative_counts(8)
    assert counts == {"mismatch": 2, "shift": 4}
    out = make_negatives(real, fake, counts, torch.tensor([1, -1, 1, 1]), {"video": 2})
    assert out["audio"][:, 0, 0].tolist() == [0, 1, 0, 1, 2, 3, -1, -1]
    assert out["video"][0, 0].tolist() == [10, 11, 12]  # audio 0 with video 1
    assert out["video"][1, 0].tolist() == [20, 21, 22]  # audio 1 with video 2
    assert out["video"][2, 0].tolist() == [0, 0, 1]  # pair 0, video later by one frame
    assert out["video"][3, 0].tolist() == [11, 12, 12]  # pair 1, video earlier by one frame
    assert torch.equal(out["video"][6:], fake["video"][6:])  # the rest stay base fakes


def test_negatives_leave_the_other_draws_unchanged_and_are_checked():
    shapes = {"audio": (16, 1), "video": (16, 2)}
    plain = JointLoss().draw(1000, shapes, shapes, generator=torch.Generator().manual_seed(0))
    neg = JointLoss(negatives={"shift": 0.5, "max_shift": 3})
    drawn = neg.draw(1000, shapes, shapes, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.t_real, drawn.t_real) and torch.equal(plain.t_fake, drawn.t_fake)
    assert all(torch.equal(plain.noise_fake[m], drawn.noise_fake[m]) for m in shapes)
    assert drawn.shifts.abs().min() >= 1 and drawn.shifts.abs().max() <= 3
    for bad in ({"mismatch": 0.7, "shift": 0.5}, {"swap": 0.1}, {"shift": -0.1}):
        with pytest.raises(ValueError, match="negatives"):
            JointLoss(negatives=bad)


def test_x0_weighting_scales_each_pair_by_sigma2_over_alpha2_capped(bases):
    """dsm_weighting="x0": a pair's L_DSM term times sigma^2 / alpha^2 (the x0-space error),
    capped; "eps" (default) leaves the paper's terms."""
    loss = JointLoss(bce=False, dsm_weighting="x0", dsm_weight_max=1.0)
    t = torch.tensor([0, 30, 99])
    w = loss.dsm_weights(bases.schedules, t)["audio"]
    alpha, sigma = bases.schedules["audio"].coefficients(t)
    expected = (sigma**2 / alpha**2).clamp(max=1.0).float()
    torch.testing.assert_close(w, expected)
    assert w[0] < 1e-3 and w[2] == 1.0  # low noise: almost no weight; high noise: the cap
    err = torch.ones(3, 4)
    assert loss.dsm_term(err, w).item() == pytest.approx(w.mean().item())
    assert JointLoss().dsm_weights(bases.schedules, t) == {"audio": None, "video": None}
    with pytest.raises(ValueError, match="dsm_weighting"):
        JointLoss(dsm_weighting="snr")


class PairProductD(nn.Module):
    """logit = w * a . v, scoring index pairs like TwoStreamDiscriminator."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.7))

    def forward(self, audio, video, t, cond=None, pairs=None):
        if pairs is not None:
            audio, video = audio[pairs[0]], video[pairs[1]]
        return self.w * (audio * video).sum(1)


def test_contrastive_term_is_the_symmetric_infonce_of_each_groups_pair_logits(bases):
    loss = JointLoss(lambda_dsm=0, contrastive={"weight": 0.5, "group": 4})
    real, fake = pairs(8, 0), pairs(8, 1)
    draws = loss.draw(100, {m: (8, 1) for m in real}, {m: (8, 1) for m in fake},
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    t = draws.t_real
    assert (t[:4] == t[0]).all() and (t[4:] == t[4]).all() and t[0] != t[4]  # one t per group
    base = JointLoss(lambda_dsm=0).draw(100, {m: (8, 1) for m in real}, {m: (8, 1) for m in fake},
                                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(draws.t_fake, base.t_fake) and torch.equal(t[[0, 4]], base.t_real[[0, 4]])
    d = PairProductD()
    out = loss(d, bases, real, fake, draws=draws)
    xt = loss.noised(bases, real, t, draws.noise_real)
    want, hits = 0.0, 0.0
    for g in (slice(0, 4), slice(4, 8)):
        logits = 0.7 * xt["audio"][g] @ xt["video"][g].T  # [audio i, video j]
        target = torch.arange(4)
        rows = torch.nn.functional.cross_entropy(logits, target)
        cols = torch.nn.functional.cross_entropy(logits.T, target)
        want += (rows + cols).item() / 4  # mean of the two directions, mean over 2 groups
        hits += ((logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target)
                 .float().mean()).item() / 4  # fmt: skip
    assert out["l_nce"].item() == pytest.approx(want, rel=1e-5)
    assert out["acc_nce"].item() == pytest.approx(hits)
    assert out["loss"].item() == pytest.approx(out["l_d"].item() + 0.5 * want, rel=1e-5)
    out["loss"].backward()
    assert d.w.grad is not None and d.w.grad != 0


def test_pair_bce_is_the_balanced_bce_of_each_groups_pair_logits(bases):
    c = {"weight": 0.0, "group": 4, "pair_bce": 2.0}  # the pairwise BCE alone is a loss too
    loss = JointLoss(bce=False, lambda_dsm=0, contrastive=c)
    real, fake = pairs(8, 0), pairs(8, 1)
    draws = loss.draw(100, {m: (8, 1) for m in real}, {m: (8, 1) for m in fake},
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    d = PairProductD()
    out = loss(d, bases, real, fake, draws=draws)
    xt = loss.noised(bases, real, draws.t_real, draws.noise_real)
    pos, neg = [], []
    for g in (slice(0, 4), slice(4, 8)):
        logits = 0.7 * xt["audio"][g] @ xt["video"][g].T  # [audio i, video j]
        for i in range(4):
            for j in range(4):
                z = logits[i, j].item()
                if i == j:
                    pos.append(math.log(1 + math.exp(-z)))  # -log sigmoid(z)
                else:
                    neg.append(math.log(1 + math.exp(z)))  # -log (1 - sigmoid(z))
    want = sum(pos) / len(pos) + sum(neg) / len(neg)  # 8 true pairs, 24 others: each a mean
    assert out["l_pbce"].item() == pytest.approx(want, rel=1e-5)
    assert out["loss"].item() == pytest.approx(2.0 * want, rel=1e-5)  # no L_D, no InfoNCE
    out["loss"].backward()
    assert d.w.grad is not None and d.w.grad != 0
    with pytest.raises(ValueError, match="pair_bce must be >= 0"):
        JointLoss(contrastive={"weight": 1, "pair_bce": -1})


def test_contrastive_term_refuses_what_it_cannot_score(bases):
    real, fake = pairs(6, 0), pairs(6, 1)
    with pytest.raises(ValueError, match="must divide each process's real batch"):
        JointLoss(lambda_dsm=0, contrastive={"weight": 1, "group": 4})(
            PairProductD(), bases, real, fake, generator=torch.Generator().manual_seed(0)
        )
    with pytest.raises(TypeError, match="scores index pairs"):
        JointLoss(lambda_dsm=0, contrastive={"weight": 1, "group": 3})(
            ProductD(), bases, real, fake, generator=torch.Generator().manual_seed(0)
        )
    with pytest.raises(ValueError, match="group must be >= 2"):
        JointLoss(contrastive={"weight": 1, "group": 1})
    with pytest.raises(ValueError, match="unknown keys"):
        JointLoss(contrastive={"weigth": 1})


def test_the_progress_bar_shows_the_terms_of_the_loss_being_minimised():
    from mmdisco.training import progress_terms

    assert progress_terms(JointLoss()) == ("l_d", "acc_real", "l_dsm")
    nce = {"weight": 1.0, "group": 4}
    only_nce = JointLoss(bce=False, lambda_dsm=0.0, contrastive=nce)
    assert progress_terms(only_nce) == ("l_nce", "acc_nce")
    both = JointLoss(bce=False, lambda_dsm=0.0, contrastive={**nce, "pair_bce": 1.0})
    assert progress_terms(both) == ("l_nce", "acc_nce", "l_pbce")
