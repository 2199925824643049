"""Network configs: the named guided-diffusion configs, and the one validator every config passes before a network
is built from it.

A config is a dict that names its family:

* ``{"family": "guided_diffusion", "config": "<name in GD_CONFIGS>"}``,
* ``{"family": "guided_diffusion", <create_model kwargs>}``,
* ``{"family": "edm", "precond_class": "EDMPrecond", <EDM constructor kwargs>}`` (the kwargs may also sit under a
  ``"kwargs"`` key, as in the parity fixtures' ``edm_*_kwargs.json``; other top-level keys of that layout are
  notes and are ignored).

:func:`validate_config` checks every value's type and range and bounds every size or count (image size, channels,
blocks per level, levels, attention resolutions, EDM's ``M``) before anything is built, so a config cannot make
the loader build for hours, divide by zero or allocate a negative-sized tensor; unknown keys are refused. A config
may also carry the guidance scales tuned for its model (:data:`GUIDANCE_SCALE`, read by
:func:`split_guidance_scales`); they are not a property of the network and never reach its constructor. What a
config *names* wrongly (an unknown config name, a config argument of the wrong type) is an
:class:`~mimicfast.errors.InputError`; what it *says* wrongly is a :class:`~mimicfast.errors.CheckpointError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from mimicfast.errors import CheckpointError, InputError
from mimicfast.presets import PRESETS

__all__ = [
    "FAMILIES",
    "GD_CONFIGS",
    "GUIDANCE_SCALE",
    "GD_NOISE_SCHEDULES",
    "Check",
    "apply_schema",
    "bad_value",
    "boolean",
    "float_in",
    "gd_name_and_kwargs",
    "int_in",
    "list_of",
    "one_of",
    "split_guidance_scales",
    "validate_config",
]

FAMILIES = ("guided_diffusion", "edm")

# Shared by the public ImageNet models: flags from guided-diffusion's README on top of its script defaults
# (model_and_diffusion_defaults: num_heads=4, num_heads_upsample=-1, channel_mult="", ...). use_fp16 is False
# because the released files are float32; pass ``dtype`` (or use_fp16=True in a dict config) to choose.
# Dropout has no parameters and is inactive in eval mode, so it is 0.0 for inference.
_IMAGENET_COMMON: dict[str, Any] = dict(
    learn_sigma=True,
    use_checkpoint=False,
    attention_resolutions="32,16,8",
    num_heads=4,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
    dropout=0.0,
    resblock_updown=True,
    use_fp16=False,
    use_new_attention_order=False,
)

GD_CONFIGS: dict[str, dict[str, Any]] = {
    # 256x256_diffusion_uncond.pt, the model DiffPure and the MimicDiffusion paper use.
    "imagenet256-uncond": dict(
        _IMAGENET_COMMON,
        image_size=256,
        num_channels=256,
        num_res_blocks=2,
        channel_mult="",
        class_cond=False,
        num_head_channels=64,
    ),
    # 256x256_diffusion.pt (class-conditional; forward needs labels y).
    "imagenet256-cond": dict(
        _IMAGENET_COMMON,
        image_size=256,
        num_channels=256,
        num_res_blocks=2,
        channel_mult="",
        class_cond=True,
        num_head_channels=64,
    ),
    # 128x128_diffusion.pt: 4 heads of varying width instead of 64-channel heads.
    "imagenet128-cond": dict(
        _IMAGENET_COMMON,
        image_size=128,
        num_channels=256,
        num_res_blocks=2,
        channel_mult="",
        class_cond=True,
        num_head_channels=-1,
    ),
    # 64x64_diffusion.pt: new attention order; trained with the *cosine* schedule (see GD_NOISE_SCHEDULES).
    "imagenet64-cond": dict(
        _IMAGENET_COMMON,
        image_size=64,
        num_channels=192,
        num_res_blocks=3,
        channel_mult="",
        class_cond=True,
        num_head_channels=64,
        use_new_attention_order=True,
    ),
    # 512x512_diffusion.pt (channel_mult starts at 0.5).
    "imagenet512-cond": dict(
        _IMAGENET_COMMON,
        image_size=512,
        num_channels=256,
        num_res_blocks=2,
        channel_mult="",
        class_cond=True,
        num_head_channels=64,
    ),
    # The bundled Fashion-MNIST model (mimicfast/weights/fmnist_unet.safetensors; docs/MODEL_CARD.md).
    "fashion-mnist-32": dict(
        image_size=32,
        in_channels=1,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,1,2",
        learn_sigma=False,
        class_cond=False,
        use_checkpoint=False,
        attention_resolutions="8",
        num_heads=1,
        num_head_channels=32,
        num_heads_upsample=-1,
        use_scale_shift_norm=True,
        dropout=0.0,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
    ),
    # tests/fixtures/parity/gd_unet_small_state_dict.pt (random weights, for tests).
    "gd-small-test": dict(
        _IMAGENET_COMMON,
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,1,2",
        class_cond=False,
        attention_resolutions="8",
        num_head_channels=16,
    ),
}

# The 1000-step beta schedule each named model was trained with (guided-diffusion README --noise_schedule).
GD_NOISE_SCHEDULES: dict[str, str] = {name: "linear" for name in GD_CONFIGS} | {"imagenet64-cond": "cosine"}

# Upper bounds on what a config may ask for. Every public model is well inside them (widest: 256 channels,
# 3 blocks per level, 7 levels, 512x512, M = 1000); they keep building a network from a hostile config fast.
MAX_RESOLUTION = 4096
MAX_CHANNELS = 4096
MAX_IMAGE_CHANNELS = 64
MAX_BLOCKS = 32
MAX_LEVELS = 8
MAX_MULT = 64
MAX_ATTENTION = 16
MAX_LABELS = 100_000
MAX_M = 2_000  # iDDPMPrecond builds its M noise levels in a Python loop (EDM uses M = 1000)

Check = Callable[[str, Any], Any]


#: Config key of the guidance scales measured best for the model, per preset name: ``{"released": 1000.0}``.
GUIDANCE_SCALE = "guidance_scale"


def split_guidance_scales(config: Any) -> tuple[Any, dict[str, float]]:
    """``(config without GUIDANCE_SCALE, the model's tuned scales)``: preset name -> finite float >= 0.

    Raises:
        CheckpointError: the scales are not an object of built-in preset names to non-negative finite numbers.
    """
    if not isinstance(config, Mapping):
        return config, {}  # validate_config names what a config must be
    rest = dict(config)
    scales = rest.pop(GUIDANCE_SCALE, {})
    if not isinstance(scales, Mapping):
        raise bad_value(f"'{GUIDANCE_SCALE}'", scales, "an object of preset name -> scale")
    for name, value in scales.items():
        if name not in PRESETS:
            raise bad_value(f"'{GUIDANCE_SCALE}' key", name, f"a preset name ({', '.join(PRESETS)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise bad_value(f"'{GUIDANCE_SCALE}.{name}'", value, "a finite number >= 0")
    return rest, {name: float(value) for name, value in scales.items()}


def bad_value(key: str, value: Any, expected: str) -> CheckpointError:
    """The one-line error for a config value: ``<key> must be <expected>, got <value>``."""
    shown = repr(value) if isinstance(value, bool | int | float | str) else f"a {type(value).__name__}"
    return CheckpointError(f"{key} must be {expected}, got {shown[:80]}")


def int_in(lo: int, hi: int, *also: int) -> Check:
    """A check for an integer (not a bool) in ``[lo, hi]`` or one of ``also``."""

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not (lo <= value <= hi or value in also):
            extra = "".join(f" or {a}" for a in also)
            raise bad_value(key, value, f"an integer in [{lo}, {hi}]{extra}")
        return value

    return check


def float_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, inf_ok: bool = False) -> Check:
    """A check for a number (not NaN, not a bool) in the interval, optionally open at either end or infinite."""

    def check(key: str, value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
        if ok and not (inf_ok and value == math.inf):
            ok = (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
        if not ok:
            span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}{' or inf' if inf_ok else ''}"
            raise bad_value(key, value, f"a number in {span}")
        return value

    return check


def boolean(key: str, value: Any) -> bool:
    """Check that ``value`` is true or false."""
    if not isinstance(value, bool):
        raise bad_value(key, value, "true or false")
    return value


def one_of(*options: str) -> Check:
    """A check for one of the strings ``options``."""

    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise bad_value(key, value, f"one of {', '.join(options)}")
        return value

    return check


def list_of(item: Check, lo: int, hi: int, *, comma_string: bool = False) -> Check:
    """A list (or tuple) of ``lo``..``hi`` items each passing ``item``; with ``comma_string`` also guided-diffusion's
    comma-separated form (``"32,16,8"``; ``""`` is the empty list)."""

    def check(key: str, value: Any) -> list:
        if comma_string and isinstance(value, str):
            try:
                value = [int(v) for v in value.split(",")] if value.strip() else []
            except ValueError:
                raise bad_value(key, value, "comma-separated integers") from None
        if not isinstance(value, list | tuple) or not lo <= len(value) <= hi:
            raise bad_value(key, value, f"a list of {lo} to {hi} values")
        return [item(f"{key}[{i}]", v) for i, v in enumerate(value)]

    return check


def _gd_channel_mult(key: str, value: Any) -> Any:
    if value == "":
        return value  # create_model's per-resolution default, checked against image_size below
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",")]
        except ValueError:
            raise bad_value(key, value, 'comma-separated integers or ""') from None
    return list_of(float_in(0, MAX_MULT, lo_open=True), 1, MAX_LEVELS)(key, value)


_GD_SCHEMA: dict[str, Check] = {
    "image_size": int_in(1, MAX_RESOLUTION),
    "num_channels": int_in(1, MAX_CHANNELS),
    "num_res_blocks": int_in(0, MAX_BLOCKS),
    "channel_mult": _gd_channel_mult,
    "learn_sigma": boolean,
    "class_cond": boolean,
    "use_checkpoint": boolean,
    "attention_resolutions": list_of(int_in(1, MAX_RESOLUTION), 0, MAX_ATTENTION, comma_string=True),
    "num_heads": int_in(1, MAX_CHANNELS),
    "num_head_channels": int_in(1, MAX_CHANNELS, -1),
    "num_heads_upsample": int_in(1, MAX_CHANNELS, -1),
    "use_scale_shift_norm": boolean,
    "dropout": float_in(0, 1, hi_open=True),
    "resblock_updown": boolean,
    "use_fp16": boolean,
    "use_new_attention_order": boolean,
    "in_channels": int_in(1, MAX_IMAGE_CHANNELS),
}
_GD_REQUIRED = ("image_size", "num_channels", "num_res_blocks")
# create_model's channel multipliers when channel_mult="" (guided_diffusion/script_util.py).
_GD_DEFAULT_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
_GD_NORM_GROUPS = 32  # guided-diffusion's GroupNorm32: every width must be a multiple of 32

_EDM_COMMON: dict[str, Check] = {
    "img_resolution": int_in(1, MAX_RESOLUTION),
    "img_channels": int_in(1, MAX_IMAGE_CHANNELS),
    "label_dim": int_in(0, MAX_LABELS),
    "use_fp16": boolean,
    "model_type": one_of("SongUNet", "DhariwalUNet"),
}
_EDM_PRECOND: dict[str, dict[str, Check]] = {
    "EDMPrecond": {
        "sigma_min": float_in(0, 1e6),
        "sigma_max": float_in(0, 1e6, lo_open=True, inf_ok=True),
        "sigma_data": float_in(0, 1e6, lo_open=True),
    },
    "VPPrecond": {
        "beta_d": float_in(0, 1e4, lo_open=True),
        "beta_min": float_in(0, 1e4),
        "M": int_in(1, MAX_M),
        "epsilon_t": float_in(0, 1, lo_open=True),
    },
    "VEPrecond": {"sigma_min": float_in(0, 1e6, lo_open=True), "sigma_max": float_in(0, 1e6, lo_open=True)},
    "iDDPMPrecond": {"C_1": float_in(0, 1, lo_open=True), "C_2": float_in(0, 1), "M": int_in(1, MAX_M)},
}
_EDM_UNET: dict[str, Check] = {
    "augment_dim": int_in(0, 1024),
    "model_channels": int_in(1, MAX_CHANNELS),
    "channel_mult": list_of(int_in(1, MAX_MULT), 1, MAX_LEVELS),
    "channel_mult_emb": int_in(1, 16),
    "num_blocks": int_in(0, MAX_BLOCKS),
    "attn_resolutions": list_of(int_in(1, MAX_RESOLUTION), 0, MAX_ATTENTION),
    "dropout": float_in(0, 1, hi_open=True),
    "label_dropout": float_in(0, 1),
}
_EDM_MODEL: dict[str, dict[str, Check]] = {
    "SongUNet": _EDM_UNET
    | {
        "embedding_type": one_of("positional", "fourier"),
        "channel_mult_noise": int_in(1, 16),
        "encoder_type": one_of("standard", "skip", "residual"),
        "decoder_type": one_of("standard", "skip"),
        "resample_filter": list_of(float_in(-1e6, 1e6), 1, 8),
    },
    "DhariwalUNet": _EDM_UNET,
}
_EDM_DEFAULT_MODEL = {"EDMPrecond": "DhariwalUNet", "iDDPMPrecond": "DhariwalUNet"}  # the others: SongUNet


def apply_schema(schema: Mapping[str, Check], cfg: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Check every key of ``cfg`` with its check in ``schema`` (unknown keys refused); the checked values."""
    unknown = [k for k in cfg if k not in schema]
    if unknown:
        raise CheckpointError(f"unknown {what} key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}")
    return {k: schema[k](k, v) for k, v in cfg.items()}


def _validate_gd(cfg: dict[str, Any]) -> dict[str, Any]:
    if "config" in cfg:
        extra = [k for k in cfg if k not in ("family", "config")]
        if extra:
            raise CheckpointError(f"a named config takes no other keys, got {', '.join(map(repr, extra))}")
        if not isinstance(cfg["config"], str) or cfg["config"] not in GD_CONFIGS:
            raise CheckpointError(
                f"unknown guided-diffusion config {cfg['config']!r}; known: {', '.join(GD_CONFIGS)}"
            )
        return cfg
    kwargs = {k: v for k, v in cfg.items() if k != "family"}
    missing = [k for k in _GD_REQUIRED if k not in kwargs]
    if missing:
        raise CheckpointError(f"guided-diffusion config lacks {', '.join(missing)}")
    out = apply_schema(_GD_SCHEMA, kwargs, "guided-diffusion")  # parsed values, for the cross-checks below
    mult = out.get("channel_mult", "")
    if mult == "":
        if out["image_size"] not in _GD_DEFAULT_MULT:
            raise CheckpointError(
                f'channel_mult "" has no default for image_size {out["image_size"]} '
                f"(defaults exist for {sorted(_GD_DEFAULT_MULT)}); give channel_mult"
            )
        mult = _GD_DEFAULT_MULT[out["image_size"]]
    widths = [int(m * out["num_channels"]) for m in mult]
    for m, width in zip(mult, widths, strict=True):
        if width < 1 or width % _GD_NORM_GROUPS:
            raise CheckpointError(
                f"num_channels {out['num_channels']} x channel_mult {m} = {width} channels; guided-diffusion's "
                f"GroupNorm needs a positive multiple of {_GD_NORM_GROUPS}"
            )
    # Attention layers: levels whose downsample factor is listed, and always the middle block (deepest width).
    factors = {out["image_size"] // r for r in out.get("attention_resolutions", [16])}
    head_channels = out.get("num_head_channels", -1)
    heads = out.get("num_heads", 1)
    heads_up = out.get("num_heads_upsample", -1)
    attended = [(w, heads) for i, w in enumerate(widths) if 2**i in factors] + [(widths[-1], heads)]
    attended += [(w, heads if heads_up == -1 else heads_up) for i, w in enumerate(widths) if 2**i in factors]
    for width, n in attended:
        per = head_channels if head_channels != -1 else n
        if width % per:
            what = f"num_head_channels {head_channels}" if head_channels != -1 else f"{n} heads"
            raise CheckpointError(f"attention over {width} channels cannot be split into {what}")
    return {"family": "guided_diffusion", **kwargs}


def _validate_edm(cfg: dict[str, Any]) -> dict[str, Any]:
    precond = cfg.get("precond_class")
    if not isinstance(precond, str) or precond not in _EDM_PRECOND:
        raise bad_value("an EDM config's precond_class", precond, f"one of {', '.join(_EDM_PRECOND)}")
    kwargs = {k: v for k, v in cfg.items() if k not in ("family", "precond_class")}
    for key in ("img_resolution", "img_channels"):
        if key not in kwargs:
            raise CheckpointError(f"EDM config lacks {key}")
    model = kwargs.get("model_type", _EDM_DEFAULT_MODEL.get(precond, "SongUNet"))
    _EDM_COMMON["model_type"]("model_type", model)
    out = apply_schema(_EDM_COMMON | _EDM_PRECOND[precond] | _EDM_MODEL[model], kwargs, f"EDM {precond}/{model}")
    levels = len(out.get("channel_mult", (1, 2, 2, 2) if model == "SongUNet" else (1, 2, 3, 4)))
    if out["img_resolution"] >> (levels - 1) < 1:
        raise CheckpointError(f"img_resolution {out['img_resolution']} is too small for {levels} resolution levels")
    return {"family": "edm", "precond_class": precond, **kwargs}


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a config (module docstring) and return it normalised: with ``family`` and EDM kwargs flattened;
    the values themselves are returned as given.

    Family inference when ``family`` is absent: ``precond_class`` means EDM, ``image_size`` + ``num_channels``
    guided-diffusion.

    Raises:
        CheckpointError: one line naming the key and what it must be (type, range, upper bound), an unknown key,
            a missing key, or an unknown family / named config.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"a config must be a JSON object, got {type(config).__name__}")
    cfg = dict(config)
    if any(not isinstance(k, str) for k in cfg):
        raise CheckpointError("config keys must be strings")
    if "family" not in cfg:  # unambiguous without it: EDM configs name a precond, GD ones an image_size
        if "precond_class" in cfg:
            cfg["family"] = "edm"
        elif ("image_size" in cfg and "num_channels" in cfg) or "config" in cfg:
            cfg["family"] = "guided_diffusion"
    if cfg.get("family") not in FAMILIES:
        raise bad_value("'family'", cfg.get("family"), f"one of {', '.join(FAMILIES)}")
    if cfg["family"] == "guided_diffusion":
        return _validate_gd(cfg)
    if isinstance(cfg.get("kwargs"), Mapping):  # fixture layout: {"precond_class", "kwargs": {...}, notes...}
        cfg = {"family": "edm", "precond_class": cfg.get("precond_class"), **cfg["kwargs"]}
    return _validate_edm(cfg)


def gd_name_and_kwargs(config: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, create_model kwargs)`` of a guided-diffusion config: a name in :data:`GD_CONFIGS`, a dict of
    create_model kwargs, or a validated ``{"family": "guided_diffusion", ...}`` dict. Custom configs are named
    ``"<custom>"``.

    Raises:
        InputError: an unknown name, or neither a name nor a dict.
        CheckpointError: a dict that does not validate, or one of another family.
    """
    if isinstance(config, str):
        if config not in GD_CONFIGS:
            raise InputError(f"unknown guided-diffusion config {config!r}; known: {', '.join(GD_CONFIGS)}")
        return config, dict(GD_CONFIGS[config])
    if not isinstance(config, Mapping):
        raise InputError(
            f"config must be a name from GD_CONFIGS or a dict of create_model kwargs, got {type(config).__name__}"
        )
    cfg = validate_config({"family": "guided_diffusion", **config})
    if cfg["family"] != "guided_diffusion":
        raise CheckpointError(f"a guided-diffusion config was expected, got family {cfg['family']!r}")
    if "config" in cfg:
        return cfg["config"], dict(GD_CONFIGS[cfg["config"]])
    return "<custom>", {k: v for k, v in cfg.items() if k != "family"}
