"""The exact log density ratio of the synthetic world: an oracle discriminator for diagnostics.

In the synthetic world (``mmdisco.data.synthetic``) a clip is a deterministic function of its
class k, onset o and disk centre c, all uniform: the audio latent is a_0(k, o), the video latent
v_0(k, o, c) (the bases' codecs applied to the rendered media). At diffusion step t each latent
is x_t = alpha_t x_0 + sigma_t n, so the posteriors over the world's parameters are softmaxes of
Gaussian log-likelihoods, and the density ratio the paper's discriminator estimates is exact::

    q(a_t, v_t) / (q(a_t) q(v_t)) = sum_{k,o} P(k, o | a_t) P(k, o | v_t) / pi(k, o)

(P(k, o | v_t) sums over the 400 centres; pi(k, o) = 1/24). :class:`SyntheticOracle` returns
its log as the logit, so guidance with it at joint scale 1 adds the exact joint correction of
the world's distribution (paper Eq. 11-12, the oracle of ``tests/test_guidance.py`` at full
size). It is a diagnostic, not a trained model: it tells how much a learned D could know at
each t (its accuracy is the Bayes limit) and where a learned D's gradient departs from the
true correction (``scripts/oracle_study.py``). The bases' marginals are only approximately the
world's, so on generated pairs it is the world's ratio, not the bases'.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mmdisco.data.synthetic import CENTER_RANGE, NUM_CLASSES, ONSETS, render_audio, render_video


class SyntheticOracle(nn.Module):
    """``logit = log sum_{k,o} P(k,o|a_t) P(k,o|v_t) / pi(k,o)`` for latents of ``bases``.

    ``bases``: the synthetic world's bases (``IndependentBases`` of ``SyntheticAudioBase`` and
    ``SyntheticVideoBase``): their codecs give the templates, their schedules alpha_t, sigma_t.
    Called like a trained D: ``oracle(audio, video, t, cond=None) -> (B, 1)``.
    """

    def __init__(self, bases, chunk: int = 2400):
        super().__init__()
        lo, hi = CENTER_RANGE
        centres = [(y, x) for y in range(lo, hi + 1) for x in range(lo, hi + 1)]
        params = [(k, o) for k in range(NUM_CLASSES) for o in ONSETS]  # the 24 (k, o)
        with torch.no_grad():
            audio = bases["audio"].encode(np.stack([render_audio(k, o) for k, o in params]))
            video = torch.cat([
                bases["video"].encode(np.stack([render_video(k, o, c) for c in centres]))
                for k, o in params
            ])  # fmt: skip
        self.num_params, self.num_centres, self.chunk = len(params), len(centres), chunk
        self.register_buffer("audio_templates", audio.float().flatten(1), persistent=False)
        self.register_buffer("video_templates", video.float().flatten(1), persistent=False)
        self.schedules = bases.schedules

    @staticmethod
    def _log_likelihoods(x: Tensor, templates: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """(B, N): log N(x; alpha T_n, sigma^2 I) up to a term constant over n."""
        x = x.flatten(1).double()
        alpha, sigma = alpha.double()[:, None], sigma.double()[:, None]
        cross = x @ templates.double().T  # (B, N)
        sq = (templates.double() ** 2).sum(1)[None]  # (1, N)
        return (alpha * cross - 0.5 * alpha**2 * sq) / sigma**2

    def log_posteriors(self, audio: Tensor, video: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """log P(k, o | a_t) and log P(k, o | v_t), each (B, 24) in float64."""
        t = t.long().cpu()
        coef = {m: self.schedules[m].coefficients(t) for m in ("audio", "video")}
        dev = audio.device
        a_alpha, a_sigma = (c.to(dev) for c in coef["audio"])
        v_alpha, v_sigma = (c.to(dev) for c in coef["video"])
        la = self._log_likelihoods(audio, self.audio_templates, a_alpha, a_sigma)
        lv = torch.cat([
            self._log_likelihoods(video, tmpl, v_alpha, v_sigma)
            for tmpl in self.video_templates.split(self.chunk)
        ], 1)  # fmt: skip  (B, 24 * 400)
        lv = lv.unflatten(1, (self.num_params, self.num_centres)).logsumexp(2)  # (B, 24)
        return la.log_softmax(1), lv.log_softmax(1)

    def forward(self, audio: Tensor, video: Tensor, t: Tensor, cond=None) -> Tensor:
        la, lv = self.log_posteriors(audio, video, t)
        logit = (la + lv).logsumexp(1) + np.log(self.num_params)  # / pi(k, o) = * 24
        return logit.to(audio.dtype)[:, None]
