"""Discriminators: ``forward(audio, video, t, cond=None) -> logit (B,)``."""

from mmdisco.discriminator.toy_mlp import ToyDiscriminator

__all__ = ["ToyDiscriminator"]

from mmdisco.discriminator.convert import load_official  # noqa: E402
from mmdisco.discriminator.two_stream import TwoStreamDiscriminator  # noqa: E402

__all__ += ["TwoStreamDiscriminator", "load_official"]
