"""Local weights of the evaluation's feature networks: nothing downloads at run time.

Each network has one expected file (or folder) name and the address of its official copy.
``weights_path`` finds it under one ``metrics.weights_dir`` (or takes an explicit path per
network) and, when it is missing, raises ONE error naming the expected file, where to put it
and where the official copy is published. Loaders: ``torch.load(weights_only=True)`` for the
authors' ``.pt`` / ``.pth`` files, safetensors for ours, ``torch.jit.load`` for TorchScript
detectors, ``from_pretrained`` on a local folder for transformers models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class FeatureNetwork:
    name: str  # registry key
    filename: str  # expected file (or folder) name under weights_dir
    kind: str  # "state_dict" | "torchscript" | "pretrained_dir" | "file"
    source: str  # where the official copy is published
    used_by: str  # the protocol(s) that use it


NETWORKS = {
    n.name: n
    for n in [
        FeatureNetwork(
            "i3d400",
            "i3d_pretrained_400.pt",
            "state_dict",
            "VideoGPT / MM-Diffusion: https://drive.google.com/uc?id=1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT"
            " (evaluations/fvd/download.py of github.com/researchmm/MM-Diffusion)",
            "fvd/videogpt-i3d400, kvd/videogpt-i3d400",
        ),
        FeatureNetwork(
            "i3d_torchscript",
            "i3d_torchscript.pt",
            "torchscript",
            "StyleGAN-V: https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
            " (src/metrics/frechet_video_distance.py of github.com/universome/stylegan-v)",
            "fvd/stylegan-v",
        ),
        FeatureNetwork(
            "vggish",
            "vggish-10086976.pth",
            "state_dict",
            "torchvggish: https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
            "vggish-10086976.pth",
            "fad/vggish",
        ),
        FeatureNetwork(
            "panns_cnn14_16k",
            "Cnn14_16k_mAP=0.438.pth",
            "state_dict",
            "PANNs: https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth",
            "fd/panns-cnn14-16k",
        ),
        FeatureNetwork(
            "audioclip",
            "AudioCLIP-Full-Training.pt",
            "state_dict",
            "https://github.com/AndreyGuzhov/AudioCLIP/releases/download/v0.1/"
            "AudioCLIP-Full-Training.pt (MM-Diffusion's evaluations/AudioCLIP/get_embedding.py)",
            "fad/audioclip-mmdiffusion",
        ),
        FeatureNetwork(
            "imagebind",
            "imagebind_huge.pth",
            "state_dict",
            "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth (README of "
            "github.com/facebookresearch/ImageBind)",
            "ib_av / ib_tv / ib_ta/imagebind-huge",
        ),
        FeatureNetwork(
            "imagebind_bpe",
            "bpe_simple_vocab_16e6.txt.gz",
            "file",
            "imagebind/bpe/bpe_simple_vocab_16e6.txt.gz of github.com/facebookresearch/ImageBind",
            "ib_tv / ib_ta/imagebind-huge (text tokenizer)",
        ),
        FeatureNetwork(
            "synchformer",
            "synchformer_state_dict.pth",
            "state_dict",
            "MMAudio: https://github.com/hkchengrex/MMAudio/releases/download/v0.1/"
            "synchformer_state_dict.pth (Synchformer 24-01-04T16-39-21, AudioSet; the file "
            "github.com/hkchengrex/av-benchmark's README asks for)",
            "desync/synchformer-avbench",
        ),
        FeatureNetwork(
            "clap",
            "clap-htsat-unfused",
            "pretrained_dir",
            "https://huggingface.co/laion/clap-htsat-unfused (a local folder: "
            "`huggingface-cli download laion/clap-htsat-unfused --local-dir DIR`)",
            "clap/laion-clap",
        ),
    ]
}


class MissingWeightsError(FileNotFoundError):
    """A feature network's weights are not on disk (nothing is downloaded at run time)."""


def weights_path(
    name: str, weights_dir: str | os.PathLike | None = None, path: str | os.PathLike | None = None
) -> Path:
    """The local file of network ``name``: ``path`` if given, else ``weights_dir/<filename>``."""
    if name not in NETWORKS:
        raise KeyError(f"unknown feature network {name!r}; known: {sorted(NETWORKS)}")
    net = NETWORKS[name]
    if path is not None:
        found = Path(path)
    elif weights_dir is not None:
        found = Path(weights_dir) / net.filename
    else:
        found = None
    if found is None or not found.exists():
        where = f"{found}" if found is not None else "(no weights_dir given)"
        raise MissingWeightsError(
            f"weights of {name} ({net.used_by}) not found: expected {net.filename!r} at {where}. "
            f"Nothing is downloaded at run time: get the official copy from {net.source} and put "
            f"it in the weights folder (scripts/evaluate.py weights_dir=DIR), or give its path "
            f"(weights.{name}=PATH; SuiteConfig(paths={{'{name}': PATH}}))."
        )
    return found


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A foreign checkpoint as a flat state dict: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:  # memory-mapped: a 4.5 GB ImageBind checkpoint is not read into memory twice
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) checkpoints cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # a training checkpoint's weights entry (PANNs: "model")
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def load_into(
    module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False
) -> None:
    """Strict load; only BatchNorm's ``num_batches_tracked`` may be absent (old checkpoints).
    ``assign`` takes the checkpoint's tensors as they are (a module built on the meta device)."""
    result = module.load_state_dict(state, strict=False, assign=assign)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source} does not match {type(module).__name__}: missing {missing[:5]} "
            f"({len(missing)}), unexpected {result.unexpected_keys[:5]} "
            f"({len(result.unexpected_keys)})"
        )
