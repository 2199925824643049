"""Shared helpers for the EDM tests: tiny configs, random non-zero weights, EDM-format pickles."""

from __future__ import annotations

import collections
import pickle
import sys
import types
from collections.abc import Callable

import numpy as np
import torch

from mimicfast.models import edm_network
from mimicfast.models.random_init import randomize_weights

# Tiny DDPM++ config in EDM's CIFAR layout (channel_mult [2,2,2], augment_dim 9) at 8x8.
TINY_DDPMPP = dict(
    img_resolution=8,
    img_channels=3,
    label_dim=0,
    use_fp16=False,
    model_type="SongUNet",
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    channel_mult_noise=1,
    resample_filter=[1, 1],
    model_channels=8,
    channel_mult=[2, 2],
    num_blocks=1,
    attn_resolutions=[4],
    dropout=0.13,
    augment_dim=9,
)

PERSISTENCE_MODULE = "torch_utils.persistence"
RECONSTRUCT = "_reconstruct_persistent_obj"


def tiny_edm(seed: int = 0, **overrides) -> torch.nn.Module:
    kwargs = dict(TINY_DDPMPP, **overrides)
    precond = kwargs.pop("precond_class", "EDMPrecond")
    return randomize_weights(edm_network(precond, **kwargs), seed)


class _Persistent:
    """Stand-in for an instance of an EDM ``@persistent_class``: pickles through
    ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` exactly like EDM's decorator does."""

    def __init__(self, class_name: str, state: dict, module_src: str = "# source not needed\n") -> None:
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return (sys.modules[PERSISTENCE_MODULE].__dict__[RECONSTRUCT], (self.meta,))


def _container(state: dict) -> torch.nn.ModuleDict:
    """A real ``ModuleDict`` shell holding pickled state (children are stand-ins, so it is never run): pickle
    writes it as ``NEWOBJ(ModuleDict) + BUILD(state)`` like EDM's files."""
    shell = torch.nn.ModuleDict.__new__(torch.nn.ModuleDict)
    shell.__dict__.update(state)
    return shell


def _module_state(module: torch.nn.Module, init_kwargs: dict | None) -> dict:
    """An nn.Module's pickled __dict__ as EDM's files hold it (parameters, buffers, submodules, attributes)."""
    state = {k: v for k, v in vars(module).items() if not k.startswith("_") and k not in ("init_kwargs",)}
    state["training"] = module.training
    state["_parameters"] = {
        k: (None if v is None else torch.nn.Parameter(v.detach().clone(), requires_grad=True))
        for k, v in module._parameters.items()
    }
    state["_buffers"] = {k: (None if v is None else v.detach().clone()) for k, v in module._buffers.items()}
    state["_non_persistent_buffers_set"] = set()
    state["_forward_hooks"] = collections.OrderedDict()
    if "skip_scale" in state:  # EDM stores np.sqrt(0.5), a numpy scalar
        state["skip_scale"] = np.float64(state["skip_scale"])
    children = {}
    for name, child in module._modules.items():
        if child is None:
            children[name] = None
        elif isinstance(child, torch.nn.ModuleDict):
            children[name] = _container(_module_state(child, None))
        else:
            children[name] = _Persistent(type(child).__name__, _module_state(child, {}))
    state["_modules"] = children
    if init_kwargs is not None:
        state["_init_args"] = ()
        state["_init_kwargs"] = dict(init_kwargs)
    return state


def edm_pickle_bytes(
    net: torch.nn.Module,
    extra: dict | None = None,
    module_src: str | None = None,
    edit: Callable[[dict], None] | None = None,
) -> bytes:
    """Pickle ``{'ema': net, ...}`` in the format of EDM's released ``.pkl`` files (plain ``pickle.dump`` of
    persistent objects), without EDM's code: fake ``torch_utils.persistence`` and ``torch.nn.ModuleDict``
    globals exist only while dumping. ``edit(state)`` may change the network's pickled ``__dict__`` first (its
    ``_init_kwargs``, ``_parameters``, ``_modules``, ...: hostile files for the tests)."""
    state = _module_state(net, dict(net.init_kwargs))
    if edit is not None:
        edit(state)
    top = _Persistent(net.precond_class, state, module_src or "# training/networks.py\n")
    data = {
        "ema": top,
        "loss_fn": _Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}),
        "augment_pipe": None,
        "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset"},
    }
    data.update(extra or {})
    return dump_with_fake_globals(data)


def dump_with_fake_globals(obj) -> bytes:
    """pickle.dumps with a fake ``torch_utils.persistence._reconstruct_persistent_obj`` importable meanwhile."""
    fake = types.ModuleType(PERSISTENCE_MODULE)

    def reconstruct(meta):  # never called: only its qualified name is written
        raise AssertionError("never called")

    reconstruct.__module__ = PERSISTENCE_MODULE
    reconstruct.__qualname__ = reconstruct.__name__ = RECONSTRUCT
    fake.__dict__[RECONSTRUCT] = reconstruct
    pkg = types.ModuleType("torch_utils")
    pkg.persistence = fake
    saved = {k: sys.modules.get(k) for k in ("torch_utils", PERSISTENCE_MODULE)}
    sys.modules["torch_utils"], sys.modules[PERSISTENCE_MODULE] = pkg, fake
    try:
        return pickle.dumps(obj, protocol=4)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def assert_close_to_fixture_d(out: torch.Tensor, vec: dict) -> None:
    """``out`` equals the fixture's float32 ``D_x`` within the fixtures README's 3e-5 * max(1, sigma)."""
    atol = 3e-5 * vec["sigma"].clamp(min=1).view(-1, 1, 1, 1)
    err = (out - vec["D_x"]).abs()
    assert bool((err <= atol).all()), f"max abs error {float(err.max()):.3e}"


def loader_state() -> list:
    """What a pickle must never change: every object the EDM unpickler hands out, with its attributes and
    defaults (compare two snapshots with ==)."""
    from mimicfast.models.edm_pickle import _ALLOWED

    state = []
    for target in _ALLOWED.values():
        state.append((target, dict(getattr(target, "__dict__", {}))))
        state.append((getattr(target, "__defaults__", None), getattr(target, "__kwdefaults__", None)))
    return state
