"""Cost of one discriminator training step vs one fine-tuning step of the two bases (paper A.9,
Table 11: D training is 1.46x-2.11x faster; this project's target is >= 2.5x).

    python scripts/bench_train_cost.py --device cuda --dtype bf16             # full size, batch 8
    python scripts/bench_train_cost.py --tiny --threads 1                     # CPU: widths / 8

Both steps see the same batch of B real pairs (latents + text embeddings), in one run:

- D step (what ``mmdisco.training`` runs): the bases' noise predictions on the real batch (no
  gradient), D on real (forward + input gradient with create_graph) and fake pairs, the
  double backward of L_D + L_DSM, Adam. It is the real ``JointLoss`` call on the bases below.
- fine-tuning step: for each base, forward + backward of its UNet with its own denoising loss
  ||eps_theta(x_t, t, c) - eps||^2 and an AdamW step.

Bases: random-init UNets of the real wrapper classes' architectures, called as the wrappers'
``model_output`` call them: AudioLDM-m (``UNet2DConditionModel``, model_channels 192, mult
(1, 2, 3, 5), CLAP FiLM-concat class embedding, self-attention at levels 2-4) on (8, 50, 16);
AnimateDiff (SD-1.5 UNet + motion adapter v2 as ``UNetMotionModel``) on (4, 16, 32, 32);
Auffusion (SD-1.5 UNet) on the padded (4, 32, 128) latent; VideoCrafter2 (``VideoCrafter2UNet``)
on (4, 16, 32, 32). D: configs/discriminator/ood_audioldm_animatediff.yaml and
ood_auffusion_vc2.yaml. ``--width-divisor k`` divides every channel width (UNets, motion modules
and D alike, GroupNorm groups 32 / k) to fit a CPU; the depth and input shapes stay.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from bench_discriminator import timed  # same folder: one timing helper for both benchmarks
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from mmdisco.bases.protocol import Condition
from mmdisco.loss import JointLoss
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
    """The two bases as the joint noise model JointLoss consumes (``schedules``,
    ``predict_noise``)."""

    def __init__(self, audio: UNetBase, video: UNetBase):
        super().__init__()
        self.audio, self.video = audio, video

    @property
    def schedules(self) -> dict[str, NoiseSchedule]:
        return {"audio": self.audio.schedule, "video": self.video.schedule}

    @torch.no_grad()
    def predict_noise(self, xs, t, conds=None):
        return {m: getattr(self, m)(xs[m], t, conds[m].cond) for m in ("audio", "video")}


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
    return BenchBases(audio, video)


def build_discriminator(pair: str, k: int) -> nn.Module:
    name = "ood_audioldm_animatediff" if pair == "audioldm_animatediff" else "ood_auffusion_vc2"
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    c = cfg.channels // k
    cfg = OmegaConf.merge(cfg, {"channels": c, "time_dim": c, "norm_groups": 32 // k})
    return instantiate(cfg)


# -- the two steps ---------------------------------------------------------------------------
def make_batch(pair: str, batch: int, device) -> tuple[dict, dict, dict]:
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
        conds[m] = Condition(emb, emb[:1] * 0, 1.0, pooled_emb, pooled_emb[:1] * 0)
    return real, fake, conds


def d_step(bases, disc, opt, loss_fn, real, fake, conds, precision) -> Callable[[], None]:
    def step():
        with precision():
            terms = loss_fn(disc, bases, real, fake, conds, conds)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()

    return step


def finetune_step(bases, opts, real, conds, precision) -> Callable[[], None]:
    def step():
        for m, opt in zip(("audio", "video"), opts):
            base = getattr(bases, m)
            x0 = real[m]
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device)
            xt = base.schedule.add_noise(x0, noise, t)
            with precision():
                out = base(xt, t, conds[m].cond)
            loss = (out.float() - noise).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def base_forward(bases, real, conds, precision) -> Callable[[], None]:
    """The bases' share of the D step: their no-grad forward on the real batch."""
    t = torch.randint(0, 1000, (real["audio"].shape[0],), device=real["audio"].device)

    def step():
        with precision():
            bases.predict_noise(real, t, conds)

    return step


def num_params(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def bench_pair(pair: str, args, device) -> None:
    torch.manual_seed(0)
    k = args.width_divisor
    bases = build_bases(pair, k).to(device)
    disc = build_discriminator(pair, k).to(device).train()
    real, fake, conds = make_batch(pair, args.batch, device)
    bf16 = args.dtype == "bf16"

    def precision():
        return torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()

    loss_fn = JointLoss(cond_dropout=0.1, residual_fp32=not args.residual_autocast)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-4)
    bases.eval().requires_grad_(False)
    parts = {"base forward (no grad)": base_forward(bases, real, conds, precision)}
    d_fn = d_step(bases, disc, d_opt, loss_fn, real, fake, conds, precision)
    times = {name: timed(fn, device, args.repeats, args.warmup) for name, fn in parts.items()}
    times["D step"] = timed(d_fn, device, args.repeats, args.warmup)
    del d_opt
    bases.train().requires_grad_(True)
    ft_opts = [
        torch.optim.AdamW(getattr(bases, m).parameters(), lr=1e-5) for m in ("audio", "video")
    ]
    ft_fn = finetune_step(bases, ft_opts, real, conds, precision)
    times["fine-tune step"] = timed(ft_fn, device, args.repeats, args.warmup)

    ratio = times["fine-tune step"] / times["D step"]
    bound = times["fine-tune step"] / times["base forward (no grad)"]
    d_only = times["D step"] - times["base forward (no grad)"]
    print(f"\n{pair}: audio base {num_params(bases.audio):.0f}M, video base "
          f"{num_params(bases.video):.0f}M, D {num_params(disc):.1f}M parameters")  # fmt: skip
    for name, s in times.items():
        print(f"  {name:28} {s:9.3f} s")
    print(f"  {'  of which D (fwd + 2x bwd + Adam)':28} {d_only:9.3f} s")
    print(
        f"  fine-tune / D step = {ratio:.2f}x   (target >= 2.5x; {PAPER_RATIO[pair] or 'paper: -'})"
    )
    print(f"  bound: fine-tune / base forward = {bound:.2f}x (a D step costing nothing beyond "
          f"the bases' forward)")  # fmt: skip
    print(f"  D's own share of the D step: {d_only / times['D step']:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 CUDA (paper), 1 CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default: 10 CUDA, 2 CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default: 3 CUDA, 1 CPU")
    parser.add_argument("--width-divisor", type=int, default=1, choices=[1, 2, 4, 8],
                        help="divide every channel width (--tiny: 8)")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="CPU preset: --width-divisor 8")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--residual-autocast", action="store_true",
                        help="D's input gradient under autocast too (default: fp32)")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.tiny:
        args.width_divisor = 8
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (8 if cuda else 1)
    args.repeats = args.repeats or (10 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    name = (
        torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"device: {name}; {args.dtype}; batch {args.batch}; widths / {args.width_divisor}; "
        f"repeats {args.repeats} after {args.warmup} warm-up; torch {torch.__version__}"
    )
    for pair in args.pairs:
        bench_pair(pair, args, device)


if __name__ == "__main__":
    main()
