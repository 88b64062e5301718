"""Discriminators: ``forward(audio, video, t, cond=None) -> logit (B,)``."""

from mmdisco.discriminator.toy_mlp import ToyDiscriminator

__all__ = ["ToyDiscriminator"]
