"""The config groups: guidance composed apart from the sampler, moved keys, one sampler builder."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from script_runner import script
from tiny_pair_bases import synthetic_bases

import mmdisco.sampling
from mmdisco.config import check_no_moved_keys, check_overrides, upgrade_run_config
from mmdisco.discriminator.two_stream import TwoStreamDiscriminator
from mmdisco.guidance import JointGuidance
from mmdisco.pairs.fakes import presample_fakes
from mmdisco.pairs.prepare import fake_sampler
from mmdisco.runs import build_guidance, resolve_joint_scales
from mmdisco.sampling import JointSampler, build_sampler

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def compose_train(*overrides: str):
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        return compose("train", ["experiment=synthetic", *overrides])


def test_guidance_group_holds_the_scales_and_the_sampler_none():
    cfg = compose_train()
    assert cfg.guidance.joint_scales == "auto"  # issue 10: chosen after training, not by hand
    assert cfg.calibration.criterion == "alignment" and cfg.calibration.scorer == "synthetic"
    assert cfg.guidance.discriminator_cfg is True
    assert "joint_scales" not in cfg.sampler
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        vc2 = compose("train", ["base=auffusion_videocrafter2"])
    assert vc2.guidance.joint_scales == "auto"  # issue 10: s* of held-out pairs, not hand-set


def test_old_sampler_key_gives_one_error_naming_the_new_key():
    proc = script("train.py", "experiment=synthetic", "sampler.joint_scales=3", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: sampler.joint_scales moved to guidance.joint_scales: write "
        "guidance.joint_scales=... instead (e.g. guidance.joint_scales={audio: 1.0, video: 8.0})"
    ]
    with pytest.raises(ValueError, match="guidance.discriminator_cfg"):
        check_overrides(["+sampler.discriminator_cfg=false"])
    with pytest.raises(ValueError, match="guidance.joint_scales"):  # the + form composes
        check_no_moved_keys(compose_train("+sampler.joint_scales=3"))
    check_overrides(["guidance.joint_scales=3", "sampler.num_steps=2"])  # no error


def test_a_run_config_written_before_the_move_is_read_with_the_key_moved():
    old = OmegaConf.create({"sampler": {"solver": "ddim", "joint_scales": {"audio": 2.0}}})
    new = upgrade_run_config(old)
    assert "joint_scales" not in new.sampler and new.guidance.joint_scales == {"audio": 2.0}
    assert new.guidance.discriminator_cfg is True  # the old JointSampler default
    check_no_moved_keys(new)


def test_resolve_joint_scales_takes_a_number_a_mapping_or_auto():
    assert resolve_joint_scales(3) == 3.0
    assert resolve_joint_scales(OmegaConf.create({"audio": 1, "video": 8})) == {
        "audio": 1.0,
        "video": 8.0,
    }
    assert resolve_joint_scales(OmegaConf.create({"audio": [0, 2], "video": 1})) == {
        "audio": [0.0, 2.0],
        "video": 1.0,
    }
    with pytest.raises(ValueError, match="guidance.joint_scales must be a number, .* or auto"):
        resolve_joint_scales("loud")


def test_the_sampler_is_built_one_way_and_guidance_is_composed_by_the_caller():
    cfg = compose_train("guidance.joint_scales=7", "sampler.joint_num_steps=1")
    bases = synthetic_bases()
    sampler = build_sampler(bases, cfg.sampler, num_steps=3)
    assert isinstance(sampler, JointSampler) and sampler.noise_model is bases
    assert sampler.solver_settings == {
        "solver": "ddim", "num_steps": 3, "order": 2, "eta": 1.0, "spacing": "leading"
    }  # fmt: skip
    guided = build_guidance(bases, torch.nn.Identity(), cfg.guidance)
    assert isinstance(guided, JointGuidance)
    assert guided.joint_scales == {"audio": 7.0, "video": 7.0}
    assert build_sampler(guided, cfg.sampler).noise_model is guided


def test_changing_a_joint_scale_reuses_the_fake_pairs(tmp_path, monkeypatch):
    """Fakes are keyed by what changes them: the guidance group and the re-noise recurrence
    (guided updates only) do not; a solver setting does."""
    bases = synthetic_bases()
    common = ["sampler.num_steps=2", "fake.num_pairs=2"]
    first = compose_train(*common)
    opts = dict(num_pairs=2, shard_size=2, batch_size=2, progress=False)
    sampler = fake_sampler(bases, first)
    path = presample_fakes(bases, ["a"], cache_dir=tmp_path, sampler=sampler, **opts)

    def no_sampling(*args, **kwargs):
        raise AssertionError("the fakes were sampled again")

    monkeypatch.setattr(mmdisco.sampling.JointSampler, "sample", no_sampling)
    for change in (["guidance.joint_scales=3"], ["guidance.discriminator_cfg=false"],
                   ["sampler.joint_num_steps=2"]):  # fmt: skip
        cfg = compose_train(*common, *change)
        sampler = fake_sampler(bases, cfg)
        again = presample_fakes(bases, ["a"], cache_dir=tmp_path, sampler=sampler, **opts)
        assert again == path, change
    monkeypatch.undo()
    other = fake_sampler(bases, compose_train(*common, "sampler.eta=0.5"))
    assert presample_fakes(bases, ["a"], cache_dir=tmp_path, sampler=other, **opts) != path


def test_fakes_refuse_a_guided_sampler():
    bases = synthetic_bases()
    guided = JointSampler(JointGuidance(bases, torch.nn.Identity()), solver="ddim", num_steps=2)
    with pytest.raises(ValueError, match="bare bases"):
        presample_fakes(bases, [], 2, "/nonexistent", sampler=guided)


def test_discriminator_fusion_keys_moved_into_one_mapping():
    with pytest.raises(
        ValueError, match="discriminator.fusion_layers moved to discriminator.fusion.layers"
    ):
        check_overrides(["discriminator.fusion_layers=2"])
    with pytest.raises(ValueError, match="discriminator.fusion.mlp_hidden"):
        check_overrides(["discriminator.mlp_hidden=[64]"])
    cfg = compose_train("discriminator.fusion.layers=3")
    assert cfg.discriminator.fusion.kind == "framewise" and cfg.discriminator.fusion.layers == 3
    # a run written with the flat keys builds the same module (same parameter names)
    old = OmegaConf.to_container(compose_train().discriminator)
    fusion = old.pop("fusion")
    old.update({"fusion": fusion.pop("kind"), "mlp_hidden": fusion.pop("mlp_hidden")})
    old.update({f"fusion_{k}": v for k, v in fusion.items()})
    upgraded = upgrade_run_config(OmegaConf.create({"discriminator": old})).discriminator
    torch.manual_seed(0)
    a = instantiate(upgraded)
    torch.manual_seed(0)
    b = instantiate(compose_train().discriminator)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(ValueError, match="unknown fusion settings"):
        TwoStreamDiscriminator(fusion={"kind": "mlp", "width": 3})



def test_new_options_are_checked_one_line_each():
    from mmdisco.validate import ConfigError, validate_train

    with pytest.raises(ConfigError) as info:
        validate_train(compose_train(
            "loss.contrastive={weight: 1, group: 5}", "fake.seeding=per_sample",
            "calibration.scorer=null", "calibration.grid=[0, 10]", "loss.negatives={bogus: 1}",
        ))  # fmt: skip
    expected = (
        "loss.contrastive.group: must divide train.batch_size (32)",
        "fake.seeding: must be one of per_pair, per_batch, got 'per_sample'",
        "calibration.scorer: must be one of synthetic, synthetic_agreement, av_align, got None",
        "calibration.grid: must be a non-empty list of joint scales > 0",
        "loss.negatives: loss.negatives has unknown keys ['bogus']",
    )
    assert len(info.value.problems) == len(expected), info.value.problems
    for problem in expected:
        assert any(p.startswith(problem) for p in info.value.problems), problem


def test_an_empty_loss_is_refused_but_the_contrastive_term_alone_is_a_loss():
    from mmdisco.validate import ConfigError, validate_train

    with pytest.raises(ConfigError) as info:
        empty = ("loss.bce=false", "loss.lambda_dsm=0", "loss.contrastive=null")
        validate_train(compose_train(*empty))
    problems = info.value.problems
    assert any(p.startswith("loss.lambda_dsm: is 0 with loss.bce=false") for p in problems)
    validate_train(compose_train(
        "loss.bce=false", "loss.lambda_dsm=0", "loss.contrastive={weight: 1, group: 32}"
    ))  # fmt: skip
