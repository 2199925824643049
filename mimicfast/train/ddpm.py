"""DDPM training of the bundled Fashion-MNIST guided-diffusion UNet (Ho et al. 2020, eps-prediction).

``x_0 = 2 * image - 1`` in [-1, 1]; ``t ~ U{0..999}``; ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with the
linear betas 1e-4..0.02 (:func:`mimicfast.schedules.linear_betas`); loss ``||eps - eps_theta(x_t, t)||^2``
(the "simple" objective), computed under bfloat16 autocast by default. Adam, linear warm-up then a constant learning
rate -- so a checkpoint at step K is exactly the model a K-step run gives -- or, with ``cosine_lr``, a cosine decay to
0 at ``steps``; gradient-norm clipping at 1, and an EMA of the weights (the weights that are exported and sampled).
A run may start from existing weights (``init``, e.g. the shipped EMA) to continue training them.
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mimicfast.errors import CheckpointError
from mimicfast.models import guided_diffusion_unet
from mimicfast.models.loader import load_state_dict_file
from mimicfast.schedules import alphas_cumprod, linear_betas, start_scale
from mimicfast.seeding import derive_seed, generator
from mimicfast.train.common import (
    DIFFUSION_NOISE,
    DROPOUT,
    batches,
    export_safetensors,
    load_checkpoint,
    save_checkpoint,
)
from mimicfast.train.configs import DDPMConfig
from mimicfast.train.data import fashion_mnist_tensors

#: ``create_model`` keyword arguments of the bundled model (registered as the config "fashion-mnist-32").
FMNIST_UNET_CONFIG: dict = {
    "image_size": 32,
    "in_channels": 1,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,1,2",
    "attention_resolutions": "8",
    "num_heads": 1,
    "num_head_channels": 32,
    "num_heads_upsample": -1,
    "learn_sigma": False,
    "class_cond": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_checkpoint": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "dropout": 0.0,
}


def unet_config(cfg: DDPMConfig) -> dict:
    """The ``create_model`` kwargs for ``cfg`` (the bundled defaults with its width and depth)."""
    return dict(FMNIST_UNET_CONFIG, num_channels=cfg.num_channels, num_res_blocks=cfg.num_res_blocks)


def learning_rate(cfg: DDPMConfig, step: int) -> float:
    """The learning rate of (0-based) ``step``: linear warm-up, then constant or a cosine decay to 0 at ``cfg.steps``."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
    if cfg.cosine_lr and step >= cfg.warmup:
        lr *= 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))
    return lr


def init_weights(model: torch.nn.Module, path: str | Path) -> str:
    """Load the warm-start weights ``path`` into ``model`` (strict); return the file's SHA-256 (recorded in the run)."""
    state = load_state_dict_file(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"init weights {path} do not fit this architecture ({first})") from exc
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ddpm_loss(model: torch.nn.Module, x0: torch.Tensor, abar: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The simple DDPM loss for a batch ``x0`` in [-1, 1], drawing ``t`` and ``eps`` from ``gen``."""
    n = x0.shape[0]
    t = torch.randint(0, abar.shape[0], (n,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a = abar[t].float().view(n, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    return F.mse_loss(model(x_t, t).float(), eps)


def train_ddpm(cfg: DDPMConfig, run_dir: str | Path, export: str | Path | None = None,
               data: torch.Tensor | None = None, until: int | None = None) -> dict:
    """Train (or resume) the UNet in ``run_dir``; return ``{"step", "loss", "wall_s"}``.

    A checkpoint (``run_dir/ddpm.pt``: model, EMA, optimizer, step, wall time) is written every
    ``cfg.checkpoint_every`` steps; re-running resumes from it, and a run whose checkpoint already reached
    ``cfg.steps`` only exports. ``export`` writes the EMA weights as float32 safetensors with the
    ``{"family": "guided_diffusion", **create_model kwargs}`` JSON beside them. ``data`` overrides the
    Fashion-MNIST training images (``[N, 1, 32, 32]`` in [0, 1]; tests). ``until`` stops after that many
    steps (a later call resumes); the export happens only once ``cfg.steps`` is reached. ``cfg.init`` starts
    both the model and its EMA from a safetensors file (its SHA-256 is recorded in the checkpoint; resuming
    with a different file is refused).
    """
    torch.manual_seed(cfg.seed)
    ckpt_path = Path(run_dir) / "ddpm.pt"
    arch = unet_config(cfg)
    model = guided_diffusion_unet(**arch)
    init_sha = init_weights(model, cfg.init) if cfg.init else ""
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start, wall, loss_avg = 0, 0.0, float("nan")
    x = (data if data is not None else fashion_mnist_tensors("train")[0]) * 2 - 1
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        if state.get("init_sha256", "") != init_sha:
            raise CheckpointError(f"{ckpt_path} was started from other weights than init={cfg.init!r}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        start, wall, loss_avg = state["step"], state["wall_s"], state["loss"]
    abar = alphas_cumprod(linear_betas())

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "ema": ema.state_dict(),
                                    "optimizer": opt.state_dict(), "step": step, "wall_s": wall,
                                    "loss": loss_avg, "config": asdict(cfg), "init_sha256": init_sha})

    stop = cfg.steps if until is None else min(until, cfg.steps)
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(batches(x.shape[0], cfg.batch_size, cfg.seed, start, stop), total=cfg.steps,
               initial=start, desc="ddpm", dynamic_ncols=True, disable=not sys.stderr.isatty())
    for step, idx in bar:
        torch.manual_seed(derive_seed(cfg.seed, DROPOUT, step))  # dropout, per step
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        # bfloat16 autocast: ~1.5x faster on CPUs with avx512_bf16; weights, Adam and the loss stay float32.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = ddpm_loss(model, x[idx], abar, generator(cfg.seed, DIFFUSION_NOISE, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        # EMA with a warm-up (decay (1 + s) / (10 + s) early on) so early checkpoints are usable.
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        loss_avg = loss.item() if loss_avg != loss_avg else 0.99 * loss_avg + 0.01 * loss.item()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_avg:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0:
            wall += time.perf_counter() - t0
            t0 = time.perf_counter()
            checkpoint(step + 1)
    if start < stop:
        wall += time.perf_counter() - t0
        checkpoint(stop)
    result = {"step": max(start, stop), "loss": loss_avg, "wall_s": wall}
    if export is not None and max(start, stop) == cfg.steps:
        export_safetensors(ema.state_dict(), export, config={"family": "guided_diffusion", **arch})
    return result


@torch.no_grad()
def sample_unconditional(model: torch.nn.Module, n: int, steps: int = 100, seed: int = 0,
                         progress: bool = False) -> torch.Tensor:
    """``n`` unguided DDPM samples (ancestral, ``steps`` respaced steps, x0_hat clipped): ``[n, C, H, W]`` in [0, 1].

    Sample i draws all its noise from seed ``seed + i`` (:class:`mimicfast.sampling.noise.PerSampleNoise`).
    """
    from mimicfast.sampling.ancestral import sample
    from mimicfast.sampling.denoisers import as_denoiser
    from mimicfast.sampling.noise import PerSampleNoise

    shape = (model.in_channels, model.image_size, model.image_size)
    denoiser = as_denoiser(model)
    sigmas = denoiser.sigmas(steps, "uniform")  # the model's own training schedule
    noise = PerSampleNoise([seed + i for i in range(n)], shape)
    x = noise() * start_scale(sigmas[0])  # x_T ~ N(0, I), in sigma space
    out = sample(denoiser, x, sigmas, noise=noise, clip_denoised=True, progress=progress)
    return ((out + 1) / 2).clamp(0, 1)
