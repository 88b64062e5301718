"""CLAP text-audio score (LAION-CLAP, Wu et al. 2023) with ``transformers``' ``ClapModel``.

Protocol ``clap/laion-clap``: each clip's sound mixed to mono, resampled to the feature
extractor's rate (48 kHz for the LAION checkpoints), cut to its first ``max_length_s`` seconds
(10 s; the extractor would otherwise crop at random), the extractor's log-mel input
(``repeatpad`` for shorter clips); the score of a (text, audio) pair is the cosine similarity of
their projected embeddings; a folder's score is the mean over its clips, each with the prompt
``prompts.csv`` (written by ``scripts/sample.py``) records for its file.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from mmdisco.media import resample_audio

PROTOCOL = "clap/laion-clap"


def read_prompts(folder: str | os.PathLike) -> dict[str, str]:
    """{file name: prompt} from ``folder/prompts.csv`` (columns file, prompt)."""
    path = Path(folder) / "prompts.csv"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the CLAP score needs the prompt of each clip "
            "(scripts/sample.py writes it for text-conditional bases)"
        )
    with open(path, newline="") as f:
        return {row["file"]: row["prompt"] for row in csv.DictReader(f)}


def _features(output) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with pooler_output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClapScorer:
    """Cosine similarity of CLAP text and audio embeddings, from a local model folder."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        from transformers import ClapModel, ClapProcessor

        self.device = torch.device(device)
        self.model = ClapModel.from_pretrained(path).eval().to(self.device)
        self.processor = ClapProcessor.from_pretrained(path)
        fe = self.processor.feature_extractor
        self.sample_rate, self.max_samples = fe.sampling_rate, fe.nb_max_samples

    def prepare_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(N,) or (C, N) audio -> mono at the extractor's rate, at most max_length_s long."""
        x = np.asarray(audio, np.float32)
        x = x.mean(axis=0) if x.ndim == 2 else x
        if sample_rate != self.sample_rate:
            x = resample_audio(x[None], sample_rate, self.sample_rate)[0]
        return x[: self.max_samples]

    @torch.no_grad()
    def audio_embeddings(self, audios: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        """(B, D) unit-norm audio embeddings."""
        clips = [self.prepare_audio(a, sample_rate) for a in audios]
        inputs = self.processor.feature_extractor(
            clips, sampling_rate=self.sample_rate, return_tensors="pt"
        ).to(self.device)
        emb = _features(self.model.get_audio_features(**inputs)).float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """(B, D) unit-norm text embeddings."""
        inputs = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        emb = _features(self.model.get_text_features(**inputs)).float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu()

    def scores(self, audios: list[np.ndarray], sample_rate: int, texts: list[str]) -> np.ndarray:
        """(B,) cosine similarity of each (text, audio) pair."""
        if len(audios) != len(texts):
            raise ValueError(f"{len(audios)} clips but {len(texts)} prompts")
        a, t = self.audio_embeddings(audios, sample_rate), self.text_embeddings(texts)
        return (a * t).sum(-1).numpy().astype(np.float64)
