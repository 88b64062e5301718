"""Auffusion's HiFi-GAN generator: official parameter names, weight-norm layouts, forward."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdisco.bases.hifigan import HifiGanGenerator, fuse_weight_norm

# rates multiply to the 160-sample hop; kernel 10 with rate 5 takes the odd (k - u) branch
TINY = {
    "num_mels": 8,
    "upsample_rates": [5, 4, 2, 2, 2],
    "upsample_kernel_sizes": [10, 8, 4, 4, 4],
    "upsample_initial_channel": 32,
    "resblock": "1",
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "sampling_rate": 16000,
    "num_gpus": 0,  # a training key of the official config: kept, unused
}


def official_keys(config) -> set[str]:
    """State-dict names of Auffusion's weight-normed Generator, spelled out from its code."""
    keys = set()

    def conv(name):
        keys.update({f"{name}.weight_g", f"{name}.weight_v", f"{name}.bias"})

    conv("conv_pre")
    conv("conv_post")
    n = len(config["resblock_kernel_sizes"])
    for i in range(len(config["upsample_rates"])):
        conv(f"ups.{i}")
        for j in range(n):
            block = f"resblocks.{i * n + j}"
            for m in range(len(config["resblock_dilation_sizes"][j])):
                if config["resblock"] == "1":
                    conv(f"{block}.convs1.{m}")
                    conv(f"{block}.convs2.{m}")
                else:
                    conv(f"{block}.convs.{m}")
    return keys


def weight_normed(model: nn.Module, parametrized: bool) -> nn.Module:
    """A copy whose convs are weight-normed (dim 0), with random magnitudes and directions."""
    model = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                if parametrized:
                    torch.nn.utils.parametrizations.weight_norm(m)
                else:
                    torch.nn.utils.weight_norm(m)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.05 if name.endswith("bias") else 1.0
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


def reference_forward(state: dict, config, mel):
    """Functional HiFi-GAN from the official description, on fused weights."""
    lrelu = 0.1

    def conv(x, name, dilation=1):
        w = state[f"{name}.weight"]
        return F.conv1d(x, w, state[f"{name}.bias"], dilation=dilation, padding="same")

    x = conv(mel, "conv_pre")
    n = len(config["resblock_kernel_sizes"])
    for i, (u, k) in enumerate(zip(config["upsample_rates"], config["upsample_kernel_sizes"])):
        pad, extra = ((k - u) // 2, 0) if (k - u) % 2 == 0 else ((k - u) // 2 + 1, 1)
        x = F.conv_transpose1d(
            F.leaky_relu(x, lrelu),
            state[f"ups.{i}.weight"],
            state[f"ups.{i}.bias"],
            stride=u,
            padding=pad,
            output_padding=extra,
        )
        total = 0
        for j, dilations in enumerate(config["resblock_dilation_sizes"]):
            h = x
            for m, d in enumerate(dilations):
                block = f"resblocks.{i * n + j}"
                t = conv(F.leaky_relu(h, lrelu), f"{block}.convs1.{m}", d)
                h = h + conv(F.leaky_relu(t, lrelu), f"{block}.convs2.{m}")
            total = total + h
        x = total / n
    return torch.tanh(conv(F.leaky_relu(x, 0.01), "conv_post")).squeeze(1)


@pytest.mark.parametrize("parametrized", [False, True])
def test_official_weight_norm_checkpoint_loads_strictly_and_matches(parametrized):
    model = HifiGanGenerator(TINY)
    official = weight_normed(model, parametrized)
    state = official.state_dict()
    if not parametrized:
        assert set(state) == official_keys(TINY)
    mel = torch.randn(2, 8, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = official(mel)
        model.load_official_state_dict(state)
        out = model(mel)
        ref = reference_forward(fuse_weight_norm(state), TINY, mel)
    assert out.shape == (2, 6 * 160)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert out.abs().max() <= 1 and out.std() > 1e-3


def test_resblock_type_2_names():
    config = {**TINY, "resblock": "2", "resblock_dilation_sizes": [[1, 3], [1, 3]]}
    official = weight_normed(HifiGanGenerator(config), parametrized=False)
    assert set(official.state_dict()) == official_keys(config)
    model = HifiGanGenerator(config)
    model.load_official_state_dict(official.state_dict())
    mel = torch.randn(1, 8, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(mel), official(mel), atol=1e-5, rtol=1e-4)


def test_wrong_names_fail_strict_loading():
    model = HifiGanGenerator(TINY)
    state = weight_normed(model, parametrized=False).state_dict()
    renamed = {k.replace("convs1", "convs_a"): v for k, v in state.items()}
    with pytest.raises(RuntimeError, match="convs_a|convs1"):
        model.load_official_state_dict(renamed)
    state.pop("conv_pre.weight_g")
    with pytest.raises(KeyError, match="conv_pre.weight_v"):
        model.load_official_state_dict(state)


def test_save_and_load_in_the_official_layout(tmp_path):
    model = HifiGanGenerator(TINY)
    model.load_official_state_dict(weight_normed(model, False).state_dict())
    model.save_pretrained(tmp_path / "vocoder")
    saved = torch.load(tmp_path / "vocoder" / "vocoder.pt", weights_only=True)
    assert set(saved["generator"]) == official_keys(TINY)
    loaded = HifiGanGenerator.from_pretrained(tmp_path / "vocoder")
    assert loaded.config == TINY and loaded.hop_length == 160 and loaded.sample_rate == 16000
    mel = torch.randn(1, 8, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel), model(mel), atol=1e-6, rtol=1e-5)


def test_missing_folder_lists_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json, vocoder.pt"):
        HifiGanGenerator.from_pretrained(tmp_path / "nowhere")
