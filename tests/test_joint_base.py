"""A joint base (one network for both modalities, as MM-Diffusion will be) fits the declared
protocol and goes through the sampler, the guidance, the loss and the pair store unchanged."""

import torch
from tiny_pair_bases import synthetic_bases
from torch import nn

from mmdisco import JointGuidance, JointLoss, JointSampler
from mmdisco.bases.protocol import MODALITIES, JointBase, JointNoiseModel
from mmdisco.hashing import weights_fingerprint
from mmdisco.pairs import ShardedPairs, presample_fakes
from mmdisco.schedule import NoiseSchedule

SHAPES = {"audio": (2, 6), "video": (3, 2, 2, 2)}  # per sample: raw waveform, pixels


class TinyJointBase(nn.Module):
    """eps for both modalities from ONE network over the concatenated, flattened pair."""

    names = MODALITIES
    conditional_names = ()
    time_axes = {"audio": 2, "video": 2}
    decodes_to_media = False
    sample_rate = None
    fps = None

    def __init__(self):
        super().__init__()
        sizes = [torch.Size(s).numel() for s in SHAPES.values()]
        self.sizes = sizes
        self.net = nn.Linear(sum(sizes) + 1, sum(sizes))
        self.schedules = {m: NoiseSchedule.ddpm() for m in MODALITIES}

    @property
    def text_conditional(self) -> bool:
        return False

    @property
    def device(self) -> torch.device:
        return self.net.weight.device

    def sample_shapes(self, batch_size):
        return {m: (batch_size, *SHAPES[m]) for m in MODALITIES}

    @torch.no_grad()
    def predict_noise(self, xs, t, conds=None):
        flat = torch.cat([xs[m].flatten(1) for m in MODALITIES] + [t[:, None] / 1000.0], 1)
        out = self.net(flat).split(self.sizes, dim=1)
        return {m: o.view(xs[m].shape) for m, o in zip(MODALITIES, out)}

    def media_format(self):
        return dict.fromkeys(("sample_rate", "num_samples", "fps", "num_frames", "height", "width"))

    def encode(self, media):
        return {m: torch.as_tensor(media[m]) for m in MODALITIES}

    def decode(self, latents):
        return dict(latents)

    def encode_prompt(self, prompts):
        return dict.fromkeys(MODALITIES)

    def cache_key(self):
        return {"joint": weights_fingerprint(self)}


class SumD(nn.Module):
    """logit = <w_a, a> + <w_v, v>: a constant, known input gradient."""

    def forward(self, audio, video, t, cond=None):
        return audio.flatten(1).sum(1) - 2.0 * video.flatten(1).sum(1)


def test_a_joint_base_and_independent_bases_both_declare_the_protocol():
    joint = TinyJointBase()
    assert isinstance(joint, JointBase) and isinstance(joint, JointNoiseModel)
    assert isinstance(synthetic_bases(), JointBase)
    assert isinstance(JointGuidance(joint, SumD()), JointNoiseModel)
    assert not isinstance(nn.Linear(1, 1), JointNoiseModel)


def test_the_sampler_takes_a_joint_base_bare_or_guided():
    torch.manual_seed(0)
    joint = TinyJointBase()
    alone = JointSampler(joint, solver="ddim", num_steps=5).sample(
        3, generator=torch.Generator().manual_seed(1)
    )
    zero = JointSampler(JointGuidance(joint, SumD(), 0.0), solver="ddim", num_steps=5).sample(
        3, generator=torch.Generator().manual_seed(1)
    )
    assert all(torch.equal(alone[m], zero[m]) for m in MODALITIES)  # D = off: the base alone
    guided = JointSampler(JointGuidance(joint, SumD(), 1.0), solver="ddim", num_steps=5).sample(
        3, generator=torch.Generator().manual_seed(1)
    )
    assert all(guided[m].shape == alone[m].shape for m in MODALITIES)
    assert not torch.allclose(guided["video"], alone["video"])
    # the residual -sigma_m(t) d logit / d m_t is added to BOTH noises of the one network
    xs, t = {m: torch.randn(3, *SHAPES[m]) for m in MODALITIES}, torch.tensor([10, 400, 900])
    eps = joint.predict_noise(xs, t)
    out = JointGuidance(joint, SumD(), {"audio": 1.0, "video": 0.5}).predict_noise(xs, t)
    sigma = joint.schedules["audio"].sigma[t].float()
    torch.testing.assert_close(out["audio"], eps["audio"] - sigma.view(3, 1, 1) * 1.0)
    torch.testing.assert_close(out["video"], eps["video"] - 0.5 * sigma.view(3, 1, 1, 1, 1) * -2.0)


def test_the_loss_and_the_pair_store_take_a_joint_base(tmp_path):
    torch.manual_seed(0)
    joint = TinyJointBase()
    path = presample_fakes(joint, [], 4, tmp_path, shard_size=2, batch_size=2, progress=False)
    fakes = ShardedPairs(path).load_all()
    assert {m: tuple(fakes[m].shape[1:]) for m in MODALITIES} == SHAPES
    real = {m: torch.randn(4, *SHAPES[m]) for m in MODALITIES}
    disc = nn.Linear(sum(joint.sizes), 1)
    d = lambda a, v, t, c=None: disc(torch.cat([a.flatten(1), v.flatten(1)], 1)).squeeze(1)  # noqa: E731
    terms = JointLoss(cond_dropout=0.0)(d, joint, real, fakes, generator=torch.Generator())
    assert torch.isfinite(terms["loss"]) and terms["l_dsm"] > 0
    terms["loss"].backward()
    assert disc.weight.grad is not None and disc.weight.grad.abs().sum() > 0
