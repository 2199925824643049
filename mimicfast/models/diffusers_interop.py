"""diffusers interop (optional extra ``mimicfast[diffusers]``): a local ``UNet2DModel`` + scheduler as a denoiser.

    >>> model = mimicfast.load("path/to/ddpm-cifar10")     # a directory: unet/ + scheduler/ (or both configs)
    >>> x_pur = mimicfast.purify(x_adv, model, preset="paper", seed=0)

The wrapper is an ``"eps_timestep"`` network like guided-diffusion's: ``forward(x_t, t)`` in VP coordinates,
``t`` a (possibly fractional) index into the scheduler's training timesteps. ``v_prediction`` and ``sample``
models are converted to eps with the scheduler's alpha_bar. The scheduler's betas are exposed as ``betas``
(float64 [num_train_timesteps]) unless they are DDPM's linear 1e-4..0.02 over 1000 steps, in which case
``betas`` is None and the exact float64 default schedule is used. Weights are read from safetensors only, from
the local directory only (no download, no pickle).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import torch
from torch import nn

from mimicfast.errors import CheckpointError, InputError
from mimicfast.safe_read import one_line, read_json
from mimicfast.schedules import alphas_cumprod, linear_betas

__all__ = ["DiffusersUNetDenoiser", "load_diffusers"]

_PREDICTIONS = ("epsilon", "v_prediction", "sample")
_DDPM_LINEAR = dict(beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)


class DiffusersUNetDenoiser(nn.Module):
    """A diffusers ``UNet2DModel`` in mimicfast's ``"eps_timestep"`` protocol.

    Attributes:
        image_size, in_channels: the UNet's ``sample_size`` and input channels.
        out_channels: C (eps) or 2C (eps + guided-diffusion-style variance interpolation ``v`` in [-1, 1], for
            schedulers with ``variance_type="learned_range"``).
        learn_sigma: whether ``v`` is returned.
        betas: float64 [T] training betas when they differ from DDPM linear 1e-4..0.02 over 1000, else None.
        prediction_type: the UNet's target (``epsilon``, ``v_prediction`` or ``sample``), converted to eps.
    """

    denoiser_kind = "eps_timestep"

    def __init__(self, unet: nn.Module, betas: torch.Tensor, prediction_type: str = "epsilon",
                 variance_type: str = "fixed_small") -> None:
        super().__init__()
        if prediction_type not in _PREDICTIONS:
            raise InputError(f"unsupported diffusers prediction_type {prediction_type!r}; expected one of "
                             f"{', '.join(_PREDICTIONS)}")
        cfg = unet.config
        if getattr(cfg, "num_class_embeds", None) or getattr(cfg, "class_embed_type", None):
            raise InputError("class-conditional diffusers UNets are not supported (mimicfast purifies without labels)")
        size = cfg.sample_size
        if not isinstance(size, int):
            if len(set(size)) != 1:
                raise InputError(f"only square diffusers UNets are supported, got sample_size {size}")
            size = size[0]
        self.unet = unet.eval().requires_grad_(False)
        self.image_size = int(size)
        self.in_channels = int(cfg.in_channels)
        self.learn_sigma = variance_type == "learned_range"
        self.out_channels = self.in_channels * (2 if self.learn_sigma else 1)
        if cfg.out_channels not in (self.in_channels, 2 * self.in_channels) or \
                (self.learn_sigma and cfg.out_channels != 2 * self.in_channels):
            raise CheckpointError(f"diffusers UNet has {cfg.out_channels} output channels for {self.in_channels} "
                                  f"input channels and variance_type {variance_type!r}")
        self.prediction_type = prediction_type
        betas = torch.as_tensor(betas, dtype=torch.float64)
        # diffusers builds linear betas in float32; within that rounding, use the exact float64 DDPM schedule
        # (the one the sampler's adapter assumes when ``betas`` is None).
        self.betas = None if _is_ddpm_linear(betas) else betas
        abar = alphas_cumprod(linear_betas() if self.betas is None else betas)
        # log sigma of the training table: fractional timesteps interpolate it, like mimicfast's adapter.
        self.register_buffer("_log_sigmas", ((1 - abar) / abar).log() / 2, persistent=False)
        self.eval()

    def _alpha_bar(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        table = self._log_sigmas.to(dtype)
        low = t.floor().clamp(0, table.numel() - 1)
        high = (low + 1).clamp(max=table.numel() - 1)
        w = t - low
        log_sigma = (1 - w) * table[low.long()] + w * table[high.long()]
        return torch.sigmoid(-2 * log_sigma)  # 1 / (1 + sigma^2)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor | float) -> torch.Tensor:
        """x_t: [N, C, S, S] = sqrt(abar) x0 + sqrt(1 - abar) eps; timesteps: [N] or scalar, 0..T-1.

        Returns [N, out_channels, S, S]: eps (and ``v``) in ``x_t``'s dtype.
        """
        dtype = next(self.unet.parameters()).dtype
        t = torch.as_tensor(timesteps, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        out = self.unet(x_t.to(dtype), t.to(dtype)).sample.to(x_t.dtype)
        c = self.in_channels
        pred, rest = out[:, :c], out[:, c : self.out_channels]
        if self.prediction_type != "epsilon":
            abar = self._alpha_bar(t.to(x_t.dtype), x_t.dtype).reshape(-1, 1, 1, 1)
            if self.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x0
                pred = abar.sqrt() * pred + (1 - abar).sqrt() * x_t
            else:  # x0 prediction
                pred = (x_t - abar.sqrt() * pred) / (1 - abar).sqrt()
        return torch.cat([pred, rest], dim=1) if self.learn_sigma else pred


def _is_ddpm_linear(betas: torch.Tensor) -> bool:
    if betas.numel() != _DDPM_LINEAR["num_train_timesteps"]:
        return False
    ref = torch.linspace(_DDPM_LINEAR["beta_start"], _DDPM_LINEAR["beta_end"], betas.numel(), dtype=torch.float64)
    return bool(torch.allclose(betas, ref, rtol=1e-6, atol=0))  # diffusers builds them in float32


def _find(root: Path, sub: str, name: str) -> Path | None:
    for folder in (root / sub, root):
        if (folder / name).is_file():
            return folder
    return None


def load_diffusers(path: str | PathLike[str]) -> DiffusersUNetDenoiser:
    """Load ``UNet2DModel`` + scheduler from a local directory (pipeline layout ``unet/`` + ``scheduler/``, or
    ``config.json`` + ``scheduler_config.json`` side by side) as a :class:`DiffusersUNetDenoiser`.

    Raises:
        InputError: diffusers is not installed (``pip install mimicfast[diffusers]``), or an unsupported model.
        CheckpointError: no UNet / scheduler config in the directory, not a UNet2DModel, or no safetensors weights.
    """
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise InputError(f"{path} is a directory: loading diffusers models needs the optional dependency "
                         "(pip install 'mimicfast[diffusers]')") from None
    root = Path(path)
    unet_dir = _find(root, "unet", "config.json")
    sched_dir = _find(root, "scheduler", "scheduler_config.json")
    if unet_dir is None or sched_dir is None:
        missing = "unet/config.json" if unet_dir is None else "scheduler/scheduler_config.json"
        raise CheckpointError(f"{root}: not a diffusers model directory (no {missing})")
    unet_cfg = read_json(unet_dir / "config.json")
    if not isinstance(unet_cfg, dict) or unet_cfg.get("_class_name") != "UNet2DModel":
        found = unet_cfg.get("_class_name") if isinstance(unet_cfg, dict) else type(unet_cfg).__name__
        raise CheckpointError(f"{unet_dir}: a {str(found)[:80]!r}, mimicfast supports UNet2DModel")
    if not any(unet_dir.glob("*.safetensors")):
        raise CheckpointError(f"{unet_dir}: no .safetensors weights (mimicfast does not unpickle .bin files; "
                              "re-save with save_pretrained(safe_serialization=True))")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True)
        scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(sched_dir, local_files_only=True))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{root}: cannot load the diffusers model: {one_line(e)}") from None
    return DiffusersUNetDenoiser(unet, scheduler.betas, scheduler.config.prediction_type,
                                 scheduler.config.variance_type)
