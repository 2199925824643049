"""diffusers interop (optional extra ``mimicfast[diffusers]``): a local ``UNet2DModel`` + scheduler as a denoiser.

    >>> model = mimicfast.load("path/to/ddpm-cifar10")     # a directory: unet/ + scheduler/ (or both configs)
    >>> x_pur = mimicfast.purify(x_adv, model, preset="paper", seed=0)

The wrapper is an ``"eps_timestep"`` network like guided-diffusion's: ``forward(x_t, t)`` in VP coordinates,
``t`` a (possibly fractional) index into the scheduler's training timesteps. ``v_prediction`` and ``sample``
models are converted to eps with the scheduler's alpha_bar. The scheduler's betas are exposed as ``betas``
(float64 [num_train_timesteps]) unless they are DDPM's linear 1e-4..0.02 over 1000 steps, in which case
``betas`` is None and the exact float64 default schedule is used. Weights are read from safetensors only, from
the local directory only (no download, no pickle), and by mimicfast's own bounded readers and checks, as every
other checkpoint is (:func:`load_diffusers`); diffusers only provides the architecture and the schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mimicfast.errors import CheckpointError, InputError
from mimicfast.models.diffusers_config import PREDICTIONS, validate_scheduler_config, validate_unet_config
from mimicfast.models.state_dict_file import one_line_errors, read_state_dict
from mimicfast.models.weight_checks import build_on_meta, check_weights, state_dict_mismatch
from mimicfast.safe_read import read_json
from mimicfast.schedules import alphas_cumprod, linear_betas

__all__ = ["DiffusersUNetDenoiser", "load_diffusers"]

_WEIGHTS = "diffusion_pytorch_model.safetensors"
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
        if prediction_type not in PREDICTIONS:
            raise InputError(f"unsupported diffusers prediction_type {prediction_type!r}; expected one of "
                             f"{', '.join(PREDICTIONS)}")
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
        if (folder / name).exists() or (folder / name).is_symlink():
            return folder
    return None


@one_line_errors
def load_diffusers(path: str | PathLike[str]) -> DiffusersUNetDenoiser:
    """Load ``UNet2DModel`` + scheduler from a local directory (pipeline layout ``unet/`` + ``scheduler/``, or
    ``config.json`` + ``scheduler_config.json`` side by side) as a :class:`DiffusersUNetDenoiser`.

    Read like every other checkpoint, without diffusers opening a file: both configs through the bounded JSON
    reader and :mod:`mimicfast.models.diffusers_config`; the UNet built from its checked config on the ``meta``
    device; ``diffusion_pytorch_model.safetensors`` through the bounded state-dict reader, matched key by key and
    shape by shape (a missing weight is an error, never a random one) and checked by
    :func:`~mimicfast.models.weight_checks.check_weights`. The result's ``checkpoint_config`` records both
    checked configs.

    Raises:
        InputError: diffusers is not installed (``pip install mimicfast[diffusers]``).
        CheckpointError: one line: no UNet / scheduler config in the directory, a config that does not validate,
            no or unreadable safetensors weights, weights that do not match the config or are not finite, or a
            training schedule with betas outside (0, 1).
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
    unet_kwargs = _checked(unet_dir / "config.json", validate_unet_config)
    sched_kwargs = _checked(sched_dir / "scheduler_config.json", validate_scheduler_config)
    weights = unet_dir / _WEIGHTS
    if not (weights.exists() or weights.is_symlink()):
        others = sorted(p.name for p in unet_dir.glob("*.safetensors"))[:3]
        detail = f"; found {', '.join(others)} (sharded or variant weights are not read)" if others else \
            " (mimicfast does not unpickle .bin files; re-save with save_pretrained(safe_serialization=True))"
        raise CheckpointError(f"{unet_dir}: no .safetensors weights named {_WEIGHTS}{detail}")
    unet = build_on_meta(lambda: UNet2DModel(**unet_kwargs), "diffusers UNet2DModel")
    state = read_state_dict(weights)
    # Files saved before diffusers renamed its attention weights (query/key/value/proj_attn -> to_q/...):
    # from_pretrained renames them the same way.
    rename = getattr(unet, "_fix_state_dict_keys_on_load", None)
    if rename is not None:
        rename(state)
    problem = state_dict_mismatch(unet, state)
    if problem is not None:
        raise CheckpointError(f"{weights}: weights do not match {unet_dir / 'config.json'}: {problem}")
    check_weights(state, str(weights))
    unet.load_state_dict(state, strict=True, assign=True)
    unfilled = next((name for name, t in (*unet.named_parameters(), *unet.named_buffers()) if t.is_meta), None)
    if unfilled is not None:  # a tensor the constructor makes but the file cannot hold (a non-persistent buffer)
        raise CheckpointError(f"{root}: this UNet2DModel configuration has no weights for {unfilled}")
    betas = DDPMScheduler(**sched_kwargs).betas.double()
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise CheckpointError(f"{sched_dir / 'scheduler_config.json'}: the training betas must lie in (0, 1) "
                              "(zero-terminal-SNR schedules are not supported)")
    # float32 like from_pretrained, whatever precision the file stores.
    model = DiffusersUNetDenoiser(unet.float(), betas, sched_kwargs.get("prediction_type", "epsilon"),
                                  sched_kwargs.get("variance_type", "fixed_small"))
    model.checkpoint_config = {"family": "diffusers", "unet": unet_kwargs, "scheduler": sched_kwargs}
    return model


def _checked(path: Path, validate: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    try:
        return validate(read_json(path))
    except CheckpointError as e:
        text = str(e)  # the JSON reader's errors name the file already, the validators' do not
        raise CheckpointError(text if str(path) in text else f"{path}: {text}") from None
