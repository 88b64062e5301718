"""Shared pieces of the cost benchmarks (bench_train_cost.py, bench_sampling.py,
bench_discriminator.py): random-init bases of the real wrapper classes' architectures at any
channel width, the paper's discriminators at the same width, a batch, and the timer.

Bases, called as the wrappers' ``model_output`` call them: AudioLDM-m (``UNet2DConditionModel``,
model_channels 192, mult (1, 2, 3, 5), CLAP FiLM-concat class embedding, self-attention at levels
2-4) on (8, 50, 16); AnimateDiff (SD-1.5 UNet + motion adapter v2 as ``UNetMotionModel``) on
(4, 16, 32, 32); Auffusion (SD-1.5 UNet) on the padded (4, 32, 128) latent; VideoCrafter2
(``VideoCrafter2UNet``) on (4, 16, 32, 32). D: configs/discriminator/ood_audioldm_animatediff.yaml
and ood_auffusion_vc2.yaml. A width divisor k divides every channel width (UNets, motion modules
and D alike, GroupNorm groups 32 / k); the depth and input shapes stay.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from mmdisco.bases.protocol import Condition
from mmdisco.schedule import NoiseSchedule

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "discriminator"
SD15 = (320, 640, 1280, 1280)
AUDIOLDM_M = (192, 384, 576, 960)  # model_channels 192 x channel_mult (1, 2, 3, 5)
# (audio latent, video latent) without batch; text: (tokens, dim) per modality, pooled dim
SHAPES = {
    "audioldm_animatediff": ((8, 50, 16), (4, 16, 32, 32)),
    "auffusion_vc2": ((4, 25, 32), (4, 16, 32, 32)),
}
TEXT = {  # modality -> (tokens, token dim, pooled dim) of each base's text encoder
    "audioldm_animatediff": {"audio": (1, 512, 512), "video": (77, 768, 768)},
    "auffusion_vc2": {"audio": (77, 768, 768), "video": (77, 1024, 1024)},
}
PAPER_RATIO = {"audioldm_animatediff": "1.46x-2.11x (paper, all pairs)", "auffusion_vc2": ""}


def scaled(widths, k: int) -> tuple[int, ...]:
    return tuple(w // k for w in widths)


# -- the base networks ----------------------------------------------------------------------------
def audioldm_unet(k: int):
    from diffusers import UNet2DConditionModel

    widths = scaled(AUDIOLDM_M, k)
    return UNet2DConditionModel(
        in_channels=8,
        out_channels=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        block_out_channels=widths,
        layers_per_block=2,
        cross_attention_dim=widths,  # no text tokens: attention over itself
        attention_head_dim=tuple(w // 32 for w in AUDIOLDM_M),  # heads of width 32 (full size)
        norm_num_groups=32 // k,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=512,
        class_embeddings_concat=True,
    )


def sd15_unet(k: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=scaled(SD15, k), norm_num_groups=32 // k, cross_attention_dim=768
    )


def animatediff_unet(k: int):
    from diffusers import MotionAdapter, UNetMotionModel

    adapter = MotionAdapter(
        block_out_channels=scaled(SD15, k),
        motion_layers_per_block=2,
        motion_num_attention_heads=8,
        motion_norm_num_groups=32 // k,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    )
    return UNetMotionModel.from_unet2d(sd15_unet(k), adapter)


def videocrafter_unet(k: int):
    from mmdisco.bases.videocrafter import VideoCrafter2UNet

    return VideoCrafter2UNet(
        block_out_channels=scaled(SD15, k), norm_num_groups=32 // k, attention_head_dim=64 // k
    )


class UNetBase(nn.Module):
    """One base as its wrapper's ``model_output`` calls the UNet; ``emb`` = the text tokens."""

    def __init__(self, kind: str, unet: nn.Module, schedule: NoiseSchedule):
        super().__init__()
        self.kind, self.unet, self.schedule = kind, unet, schedule

    def forward(self, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        if self.kind == "audioldm":  # (B, 8, T, 16), CLAP (B, 512) as the class embedding
            return self.unet(x, t, encoder_hidden_states=None, class_labels=emb[:, 0]).sample
        if self.kind == "auffusion":  # (B, 4, T, 32) -> padded UNet layout (B, 4, 32, 128)
            frames = x.shape[2]
            xu = x.transpose(-1, -2)
            xu = torch.cat([xu, xu.new_zeros(*xu.shape[:-1], 128 - frames)], -1)
            return (
                self.unet(xu, t, encoder_hidden_states=emb).sample[..., :frames].transpose(-1, -2)
            )
        if self.kind == "animatediff":  # (B, 4, F, h, w), text repeated per frame
            emb = emb.repeat_interleave(x.shape[2], dim=0)
            return self.unet(x, t, emb, return_dict=False)[0]
        return self.unet(x, t, emb, fps=8, return_dict=False)[0]  # videocrafter2


class BenchBases(nn.Module):
    """The two bases as a joint noise model (``names``, ``schedules``, ``sample_shapes``,
    ``predict_noise``) for JointLoss, JointGuidance and JointSampler. A condition with an
    unconditional embedding and a guidance scale != 1 gets classifier-free guidance, both
    branches in one batched forward (as the real wrappers do)."""

    names = ("audio", "video")

    def __init__(self, audio: UNetBase, video: UNetBase, shapes=None):
        super().__init__()
        self.audio, self.video = audio, video
        self.shapes = shapes

    @property
    def schedules(self) -> dict[str, NoiseSchedule]:
        return {"audio": self.audio.schedule, "video": self.video.schedule}

    def sample_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return {m: (batch_size, *s) for m, s in zip(self.names, self.shapes)}

    @torch.no_grad()
    def predict_noise(self, xs, t, conds=None):
        out = {}
        for m in self.names:
            base, c, x = getattr(self, m), conds[m], xs[m]
            if c.uncond is None or c.guidance_scale == 1.0:
                out[m] = base(x, t, c.cond)
                continue
            b = x.shape[0]
            emb = torch.cat([c.uncond.expand(b, *c.cond.shape[1:]), c.cond])
            e_u, e_c = base(torch.cat([x, x]), torch.cat([t, t]), emb).chunk(2)
            out[m] = e_u + c.guidance_scale * (e_c - e_u)
        return out


def build_bases(pair: str, k: int) -> BenchBases:
    sd = NoiseSchedule.ddpm("scaled_linear", 1000, 0.00085, 0.012)
    if pair == "audioldm_animatediff":
        audio = UNetBase(
            "audioldm", audioldm_unet(k), NoiseSchedule.ddpm("linear", 1000, 0.0015, 0.0195)
        )
        video = UNetBase("animatediff", animatediff_unet(k), sd)
    else:
        audio = UNetBase("auffusion", sd15_unet(k), sd)
        video = UNetBase("videocrafter2", videocrafter_unet(k), sd)
    return BenchBases(audio, video, SHAPES[pair])


def build_discriminator(pair: str, k: int) -> nn.Module:
    name = "ood_audioldm_animatediff" if pair == "audioldm_animatediff" else "ood_auffusion_vc2"
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    c = cfg.channels // k
    cfg = OmegaConf.merge(cfg, {"channels": c, "time_dim": c, "norm_groups": 32 // k})
    return instantiate(cfg)


def make_batch(pair: str, batch: int, device, guidance_scale: float = 1.0):
    g = torch.Generator().manual_seed(0)
    shapes = SHAPES[pair]
    real = {
        m: torch.randn(batch, *s, generator=g).to(device)
        for m, s in zip(("audio", "video"), shapes)
    }
    fake = {
        m: torch.randn(batch, *s, generator=g).to(device)
        for m, s in zip(("audio", "video"), shapes)
    }
    conds = {}
    for m, (tokens, dim, pooled) in TEXT[pair].items():
        emb = torch.randn(batch, tokens, dim, generator=g).to(device)
        pooled_emb = torch.randn(batch, pooled, generator=g).to(device)
        conds[m] = Condition(emb, emb[:1] * 0, guidance_scale, pooled_emb, pooled_emb[:1] * 0)
    return real, fake, conds


def num_params(module: nn.Module) -> float:
    """Millions of parameters."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def timed(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Mean seconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats
