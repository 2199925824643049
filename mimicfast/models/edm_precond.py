"""EDM's preconditioners: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` (Karras et al. 2022, Table 1).

Each wraps an inner network (``SongUNet`` or ``DhariwalUNet``) as ``self.model``, owns no parameters itself (so
the state dict is the inner net's under ``model.``), and is a ``"x0_sigma"`` denoiser for mimicfast's sampler.
The precond arithmetic runs in float32 like EDM's, or in float64 when ``x`` is float64 (ideal-f64 convention);
the inner net runs in float16 only with ``use_fp16`` on CUDA, as in EDM.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mimicfast.models.edm_dhariwal import DhariwalUNet
from mimicfast.models.edm_songunet import SongUNet

__all__ = ["EDMPrecond", "PRECOND_CLASSES", "VEPrecond", "VPPrecond", "iDDPMPrecond"]

MODEL_CLASSES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}

Coefficients = tuple[torch.Tensor | float, torch.Tensor | float, torch.Tensor | float, torch.Tensor]


class _Precond(nn.Module):
    """Shared wrapper logic; subclasses give ``coefficients(sigma) -> (c_skip, c_out, c_in, c_noise)``."""

    denoiser_kind = "x0_sigma"
    out_channel_factor = 1

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool, model_type: str,
                 model_kwargs: dict) -> None:
        super().__init__()
        if model_type not in MODEL_CLASSES:
            raise ValueError(f"unknown EDM model_type {model_type!r}; expected one of {sorted(MODEL_CLASSES)}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.model = MODEL_CLASSES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                               out_channels=img_channels * self.out_channel_factor,
                                               label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None, force_fp32: bool = False) -> torch.Tensor:
        """Denoised estimate D(x, sigma).

        x: [N, img_channels, R, R] noisy image in sigma space (x = x0 + sigma n, x0 in [-1, 1]).
        sigma: scalar or [N]. class_labels: [N, label_dim] (one-hot) or None (zeros) for conditional nets.
        augment_labels: [N, augment_dim] or None. Returns [N, img_channels, R, R] in float32 (float64 for f64 x).
        """
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, device=x.device).to(dtype).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        sigma = sigma.reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], dtype=dtype, device=x.device)
        else:
            class_labels = class_labels.to(dtype).reshape(-1, self.label_dim)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        f_x = self.model((c_in * x).to(torch.float16 if use_half else dtype), c_noise.flatten(),
                         class_labels=class_labels, augment_labels=augment_labels)
        return c_skip * x + c_out * f_x[:, : self.img_channels].to(dtype)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Nearest supported noise level (identity for continuous-sigma preconditioners)."""
        return torch.as_tensor(sigma)


class VPPrecond(_Precond):
    """Variance-preserving preconditioning: c_skip 1, c_out -sigma, c_in 1/sqrt(sigma^2+1),
    c_noise (M-1) t(sigma) with sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        # float32 like EDM (sigma_min = 0.0009765625 rather than the exact 0.0010005, see schedules.json).
        # On the CPU even while building on the meta device (load paths do), so the floats exist.
        self.sigma_min = float(self.sigma(torch.tensor(epsilon_t, device="cpu")))
        self.sigma_max = float(self.sigma(torch.tensor(1, device="cpu")))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t) of the VP SDE, t in [epsilon_t, 1] (float32 for Python floats, as EDM)."""
        t = t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t**2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """t(sigma), the inverse of :meth:`sigma`."""
        sigma = sigma if isinstance(sigma, torch.Tensor) else torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    """Variance-exploding preconditioning: c_skip 1, c_out sigma, c_in 1, c_noise log(sigma / 2)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet",
                 **model_kwargs) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return 1, sigma, 1, (0.5 * sigma).log()


class EDMPrecond(_Precond):
    """EDM preconditioning: c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2),
    c_in = 1/sqrt(sd^2+sigma^2), c_noise = ln(sigma)/4 with sd = sigma_data."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = math.inf, sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


class iDDPMPrecond(_Precond):  # noqa: N801 -- EDM's class name, matched when loading its pickles
    """Improved-DDPM preconditioning over M discrete levels ``u`` (persistent buffer); the inner net outputs
    2 * img_channels (eps and learned variance) of which D uses the first half. c_noise = M - 1 - j(sigma)."""

    out_channel_factor = 2

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 C_1: float = 0.001, C_2: float = 0.008, M: int = 1000, model_type: str = "DhariwalUNet",
                 **model_kwargs) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        # float32 recurrence like EDM: u_{j-1} = sqrt((u_j^2 + 1) / max(abar_{j-1} / abar_j, C_1) - 1).
        u = torch.zeros(M + 1, device="cpu")
        for j in range(M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def alpha_bar(self, j: torch.Tensor | int) -> torch.Tensor:
        j = j if isinstance(j, torch.Tensor) else torch.tensor(j, device="cpu")
        return (0.5 * math.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma: torch.Tensor | float, return_index: bool = False) -> torch.Tensor:
        """Nearest level in ``u`` (or its index); not differentiable w.r.t. sigma, as in EDM."""
        sigma = torch.as_tensor(sigma)
        u = self.u
        index = torch.cdist(sigma.to(u.device, u.dtype).reshape(1, -1, 1), u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        index = self.round_sigma(sigma, return_index=True).to(sigma.dtype)
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), self.M - 1 - index


PRECOND_CLASSES: dict[str, type[_Precond]] = {
    cls.__name__: cls for cls in (VPPrecond, VEPrecond, EDMPrecond, iDDPMPrecond)
}
