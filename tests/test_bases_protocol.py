"""The base protocol: batched CFG, prediction-type conversion, prompt dropout."""

import pytest
import torch

from mmdisco.bases.protocol import Condition, DiffusionBase, IndependentBases
from mmdisco.loss import apply_keep
from mmdisco.schedule import NoiseSchedule


class EmbBase(DiffusionBase):
    """out = x * (1 + emb.mean) + t/1000; records the batch size of each forward."""

    def __init__(self):
        super().__init__()
        self.schedule = NoiseSchedule.ddpm()
        self.batches = []

    def model_output(self, x_t, t, emb):
        self.batches.append(x_t.shape[0])
        scale = 1 if emb is None else 1 + emb.mean(1).view(-1, *([1] * (x_t.ndim - 1)))
        return x_t * scale + t.view(-1, *([1] * (x_t.ndim - 1))) / 1000


def test_cfg_is_one_forward_and_equals_two_separate_calls():
    base = EmbBase()
    x, t = torch.randn(3, 2, 4), torch.tensor([10, 500, 900])
    c, u = torch.randn(3, 5), torch.zeros(1, 5)  # uncond with batch 1 broadcasts
    guided = base.predict_noise(x, t, Condition(cond=c, uncond=u, guidance_scale=7.5))
    assert base.batches == [6]  # both branches in one batched forward
    eps_c = base.predict_noise(x, t, Condition(cond=c))
    eps_u = base.predict_noise(x, t, Condition(cond=u))
    torch.testing.assert_close(guided, eps_u + 7.5 * (eps_c - eps_u))


class OracleBase(DiffusionBase):
    """Outputs exactly what a perfect network of ``kind`` would, for known x0 and eps."""

    def __init__(self, kind, x0, eps, schedule):
        super().__init__()
        self.prediction_type, self.x0, self.eps, self.schedule = kind, x0, eps, schedule

    def model_output(self, x_t, t, emb):
        a, s = (c.float()[:, None] for c in self.schedule.coefficients(t))
        return {
            "epsilon": self.eps,
            "sample": self.x0,
            "v_prediction": a * self.eps - s * self.x0,
            "flow": self.eps - self.x0,
        }[self.prediction_type]


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction", "flow"])
@pytest.mark.parametrize("scale_b", [None, 0.7])
def test_prediction_types_convert_to_eps_on_any_schedule(kind, scale_b):
    sched = NoiseSchedule.ddpm("scaled_linear", 1000, 0.00085, 0.012, scale_b=scale_b)
    x0, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([1, 200, 600, 999])
    x_t = sched.add_noise(x0, eps, t)
    got = OracleBase(kind, x0, eps, sched).predict_noise(x_t, t)
    torch.testing.assert_close(got, eps, rtol=1e-4, atol=1e-4)


def test_independent_bases_batch_a_shared_base_once():
    base = EmbBase()
    bases = IndependentBases(audio=base, video=base)
    x, t = {"audio": torch.randn(2, 3), "video": torch.randn(2, 3)}, torch.tensor([3, 4])
    sep = {m: base.predict_noise(x[m], t) for m in x}
    base.batches.clear()
    both = bases.predict_noise(x, t)
    assert base.batches == [4]  # the toy's one base serves both coordinates in one forward
    assert all(torch.equal(both[m], sep[m]) for m in x)


def test_prompt_dropout_replaces_the_same_samples_in_every_modality():
    c = {
        m: Condition(
            cond=torch.ones(1000, 2),
            uncond=torch.zeros(1, 2),
            pooled=torch.ones(1000, 3),
            pooled_uncond=torch.zeros(1, 3),
        )
        for m in ("audio", "video")
    }
    keep = torch.rand(1000, generator=torch.Generator().manual_seed(0)) >= 0.1
    out = apply_keep(c, keep)
    dropped = out["audio"].cond[:, 0] == 0
    assert 0.07 < dropped.float().mean().item() < 0.13
    assert torch.equal(dropped, out["video"].cond[:, 0] == 0)
    assert torch.equal(dropped, out["audio"].pooled[:, 0] == 0)
