"""FVD with StyleGAN-V's TorchScript I3D detector (``fvd2048_16f``; the MMDisCo paper's FVD).

The detector ``i3d_torchscript.pt`` (a TorchScript port of the tf.hub I3D of the original FVD
code; its weights differ from ``i3d_pretrained_400.pt``) carries its own preprocessing: it is
called on uint8-valued (B, 3, T, H, W) videos with ``rescale=True, resize=True,
return_features=True`` (``src/metrics/frechet_video_distance.py`` of universome/stylegan-v)
and returns the 400 logits before the softmax. Clips: the first 16 consecutive frames
(StyleGAN-V takes generated clips from frame 0 and real ones at a random offset; here every
clip starts at frame 0, deterministic). FD with scipy's sqrtm. The paper evaluates 2048 clips.
"""

from __future__ import annotations

import numpy as np
import torch

NUM_FRAMES = 16
DETECTOR_KWARGS = {"rescale": True, "resize": True, "return_features": True}


def clip_tensor(frames: np.ndarray, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, num_frames, H, W) uint8: the first num_frames frames."""
    if len(frames) < num_frames:
        raise ValueError(f"FVD (stylegan-v) needs {num_frames} frames per clip, got {len(frames)}")
    return torch.from_numpy(np.ascontiguousarray(frames[:num_frames])).permute(3, 0, 1, 2)


@torch.no_grad()
def detector_features(detector, clips: list[torch.Tensor], device) -> torch.Tensor:
    """(B, 400) features of a batch of (3, T, H, W) uint8 clips of one size."""
    videos = torch.stack(clips).to(device)
    return detector(videos, **DETECTOR_KWARGS).float().cpu()
