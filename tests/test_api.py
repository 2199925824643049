"""purify() and Purifier: determinism, batch independence, input errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mimicfast
from mimicfast.errors import InputError
from tests.helpers import TinyEpsNet

KW = dict(preset="paper", steps=10, scale=1e-3)


@pytest.fixture(scope="module")
def net() -> TinyEpsNet:
    return TinyEpsNet(learn_sigma=True)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_output_shape_range_and_determinism(net, x) -> None:
    a = mimicfast.purify(x, net, seed=5, **KW)
    b = mimicfast.purify(x, net, seed=5, **KW)
    c = mimicfast.purify(x, net, seed=6, **KW)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("preset", ["paper", "released"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_image_alone_equals_image_in_batch(net, x, preset, dtype) -> None:
    """The authors' code averages the loss over the batch; mimicfast keeps every quantity per sample.

    In float64 the results are bitwise equal. In float32, CPU convolutions round differently for different
    batch shapes (about 1e-7 per call), which the guided steps amplify; that is the only difference left.
    """
    model, images = copy.deepcopy(net).to(dtype), x.to(dtype)
    kw = dict(KW, preset=preset) if preset == "paper" else dict(preset=preset, steps=10)
    atol = 0.0 if dtype == torch.float64 else 1e-3
    batch = mimicfast.purify(images, model, seed=[7, 8, 9, 10], **kw)
    alone = mimicfast.purify(images[2:3], model, seed=[9], **kw)
    torch.testing.assert_close(alone[0], batch[2], rtol=0, atol=atol)
    chunked = mimicfast.purify(images, model, seed=[7, 8, 9, 10], batch_size=3, **kw)
    torch.testing.assert_close(chunked, batch, rtol=0, atol=atol)


def test_int_seed_means_seed_plus_index(net, x) -> None:
    torch.testing.assert_close(
        mimicfast.purify(x, net, seed=3, **KW), mimicfast.purify(x, net, seed=[3, 4, 5, 6], **KW), rtol=0, atol=0
    )


def test_purifier_in_sequential(net, x) -> None:
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    model = nn.Sequential(mimicfast.Purifier(net, seed=5, **KW), classifier)
    logits = model(x)
    assert logits.shape == (4, 10)
    torch.testing.assert_close(logits, classifier(mimicfast.purify(x, net, seed=5, **KW)))
    assert "paper" in repr(model)


def test_purifier_seed_per_call(net, x) -> None:
    """``Purifier(...)(x, seed=s)`` equals ``purify(x, seed=s)`` and leaves the module's own seed in place."""
    purifier = mimicfast.Purifier(net, seed=5, fast=True, **KW)
    torch.testing.assert_close(purifier(x, seed=9), mimicfast.purify(x, net, seed=9, **KW), rtol=0, atol=0)
    torch.testing.assert_close(purifier(x), mimicfast.purify(x, net, seed=5, **KW), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.rand(3, 8, 8), "rank"),
        (torch.rand(1, 1, 8, 8), "channels"),
        (torch.rand(1, 3, 9, 9), "8x8"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "floating"),
        (torch.full((1, 3, 8, 8), 1.5), r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.empty(0, 3, 8, 8), "empty"),
        ([[0.5]], "torch.Tensor"),
    ],
)
def test_bad_input_names_the_problem(net, bad, match) -> None:
    with pytest.raises(InputError, match=match):
        mimicfast.purify(bad, net, **KW)


def test_bad_settings(net, x) -> None:
    with pytest.raises(InputError, match="unknown preset"):
        mimicfast.purify(x, net, preset="nope")
    with pytest.raises(InputError, match="seeds"):
        mimicfast.purify(x, net, seed=[1, 2], **KW)
    with pytest.raises(InputError, match="unknown preset field"):
        mimicfast.purify(x, net, sclae=2.0)
    with pytest.raises(InputError, match="upsample"):
        mimicfast.purify(x, net, upsample="bilinear")
    with pytest.raises(InputError, match="batch_size"):
        mimicfast.purify(x, net, batch_size=0, **KW)
    with pytest.raises(InputError, match="denoiser"):
        mimicfast.purify(x, object())


def test_plain_callable_denoiser(x) -> None:
    """Any D(x, sigma) works; with D = 0 and no guidance the DDPM chain ends exactly at 0 -> 0.5."""

    def zero_denoiser(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z)

    out = mimicfast.purify(x, zero_denoiser, preset="released", steps=10, scale=0.0)
    torch.testing.assert_close(out, torch.full_like(x, 0.5))


@pytest.mark.parametrize("preset", ["paper", "released"])
def test_fast_path_on_cpu_equals_eager(net, x, preset) -> None:
    kw = dict(KW, preset=preset) if preset == "paper" else dict(preset=preset, steps=10)
    eager = mimicfast.purify(x, net, seed=2, fast=False, **kw)
    torch.testing.assert_close(mimicfast.purify(x, net, seed=2, fast=True, **kw), eager, rtol=0, atol=0)
    purifier = mimicfast.Purifier(net, seed=2, fast=True, **kw)
    torch.testing.assert_close(purifier(x), eager, rtol=0, atol=0)
    torch.testing.assert_close(purifier(x), eager, rtol=0, atol=0)  # cached fast state, same result
    with pytest.raises(InputError, match="autocast needs the fast path"):
        mimicfast.purify(x, net, fast=False, autocast="bf16", **kw)


def test_seed_none_draws_private_defense_randomness(net, x) -> None:
    """seed=None: fresh draws on every call from the OS, so torch.manual_seed cannot replay the defense."""
    purifier = mimicfast.Purifier(net, seed=None, **KW)
    torch.manual_seed(11)
    a, b = purifier(x), purifier(x)
    assert not torch.equal(a, b)  # a new draw on every call
    torch.manual_seed(11)
    assert not torch.equal(purifier(x), a)  # the global seed does not replay the defense
    torch.manual_seed(11)
    assert not torch.equal(mimicfast.purify(x, net, seed=None, **KW), a)
    torch.testing.assert_close(purifier(x, seed=3), mimicfast.purify(x, net, seed=3, **KW), rtol=0, atol=0)


@pytest.mark.parametrize("call", ["purifier", "purify"])
def test_seed_none_neither_reads_nor_advances_torchs_generator(net, x, call) -> None:
    """A defense call with seed=None leaves the caller's random stream exactly where it was."""
    purifier = mimicfast.Purifier(net, seed=None, **KW)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    purifier(x) if call == "purifier" else mimicfast.purify(x, net, seed=None, **KW)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(4), expected)


def test_numpy_integer_seed_is_accepted(net, x) -> None:
    import numpy as np

    torch.testing.assert_close(
        mimicfast.purify(x, net, seed=np.int64(3), **KW), mimicfast.purify(x, net, seed=3, **KW), rtol=0, atol=0
    )


@pytest.mark.parametrize(
    ("seed", "match"),
    [(torch.tensor(3), "torch.Tensor"), (2**64, r"2\*\*64"), (2**64 - 2, r"seed \+ 3"), (-1, r"\[0, 2\*\*64"),
     (1.5, "int"), ("ab", "int"), ([1, 2, 3, "x"], r"seed\[3\]")],
)  # fmt: skip
def test_bad_seeds(net, x, seed, match) -> None:
    with pytest.raises(InputError, match=match):
        mimicfast.purify(x, net, seed=seed, **KW)


@pytest.mark.parametrize(
    ("override", "match"),
    [(dict(scale=float("nan")), "scale"), (dict(eta=float("nan")), "eta"),
     (dict(reduction_batch=float("nan")), "reduction_batch"), (dict(window="ab"), "window"),
     (dict(window=(0.2,)), "window"), (dict(window=(0.1, 0.2, 0.3)), "window"), (dict(steps=0), "steps")],
)  # fmt: skip
def test_bad_numeric_knobs_name_the_field(net, x, override, match) -> None:
    with pytest.raises(InputError, match=match):
        mimicfast.purify(x, net, **{**KW, **override})


@pytest.mark.parametrize(
    ("device", "match"), [("nope", "not a device"), ("meta", "meta"), ("cuda:99", "cuda"), (3.5, "not a device")]
)
def test_bad_devices(net, x, device, match) -> None:
    with pytest.raises(InputError, match=match):
        mimicfast.purify(x, net, device=device, **KW)


def test_device_never_moves_or_changes_the_callers_model(net, x) -> None:
    model = copy.deepcopy(net)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="meta"):
        mimicfast.purify(x, model, device="meta", **KW)
    torch.testing.assert_close(
        mimicfast.purify(x, model, device="cpu", seed=1, **KW), mimicfast.purify(x, net, seed=1, **KW), rtol=0, atol=0
    )
    meta_model = copy.deepcopy(net).to("meta")
    with pytest.raises(InputError, match="meta"):
        mimicfast.purify(x, meta_model, device="cpu", **KW)
    with pytest.raises(InputError, match="meta"):
        mimicfast.purify(x, meta_model, **KW)
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, before[k])
    assert all(p.device.type == "meta" for p in meta_model.parameters())


def test_on_device_copies_instead_of_moving(net) -> None:
    """Moving to another device works on a copy whose tensors are the moved ones (checked with float64)."""
    from mimicfast.api import _on_device
    from mimicfast.sampling import as_denoiser

    model = copy.deepcopy(net)
    denoiser = as_denoiser(model)
    assert _on_device(denoiser, torch.device("cpu")) is denoiser
    memo_copy = _on_device(denoiser, torch.device("meta"))
    assert all(p.is_meta for p in memo_copy.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_meta_or_sparse_images_are_refused(net, x, kind) -> None:
    bad = x.to("meta") if kind == "meta" else x.to_sparse()
    with pytest.raises(InputError, match=kind):
        mimicfast.purify(bad, net, **KW)


def test_a_denoiser_returning_nan_is_reported(x) -> None:
    from mimicfast.errors import NumericalError

    def nan_denoiser(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.full_like(z, float("nan"))

    with pytest.raises(NumericalError, match="NaN"):
        mimicfast.purify(x, nan_denoiser, preset="released", steps=4)


def test_purifier_checks_its_seed_when_built(net) -> None:
    import numpy as np

    for seed in (None, 3, np.int64(2), [1, 2], np.arange(3)):
        mimicfast.Purifier(net, seed=seed)
    for seed in (torch.tensor(3), "ab", 2**64, [1, -1], 1.5):
        with pytest.raises(InputError, match="seed"):
            mimicfast.Purifier(net, seed=seed)


def test_released_unclamped_output_is_the_clamped_one_before_its_clamp(net, x) -> None:
    clamped = mimicfast.purify(x, net, preset="released", steps=10, seed=3)
    raw = mimicfast.purify(x, net, preset="released", steps=10, seed=3, clamp_output=False)
    assert torch.equal(raw.clamp(0, 1), clamped)
    assert bool(((raw < 0) | (raw > 1)).any())  # the released loop leaves [0, 1] (a random network, scale 3000)


def test_clamp_output_must_be_a_bool(net, x) -> None:
    with pytest.raises(InputError, match="clamp_output"):
        mimicfast.purify(x, net, preset="released", steps=2, clamp_output="no")


@pytest.mark.parametrize("preset", [["paper"], {"name": "paper"}, 3, None, "Paper"])
def test_a_preset_that_is_no_name_or_preset_is_an_input_error(net, x, preset) -> None:
    with pytest.raises(InputError, match="unknown preset"):
        mimicfast.purify(x, net, preset=preset, steps=2)
    with pytest.raises(InputError, match="unknown preset"):
        mimicfast.Purifier(net, preset=preset)


@pytest.mark.parametrize(
    ("model", "match"),
    [(lambda x, sigma: "not a tensor", r"denoiser's output must be a tensor .* got str"),
     (lambda x, sigma: x[:, :1], r"denoiser's output has shape \(4, 1, 8, 8\), expected \(4, 3, 8, 8\)"),
     (lambda x, sigma: x.flatten(), r"denoiser's output has shape \(768,\)"),
     (lambda x, sigma: x[:, :, :4], "denoiser's output has shape")],
)  # fmt: skip
def test_a_model_returning_the_wrong_thing_is_an_input_error(x, model, match) -> None:
    with pytest.raises(InputError, match=match):
        mimicfast.purify(x, model, preset="released", steps=2)


def test_default_steps_are_one_rule_for_the_api_and_the_commands(net) -> None:
    """steps=None: the paper preset takes T = 100 for a small model and 1000 for one of unknown size; a Preset
    object keeps its own T; the released preset its 100."""
    from mimicfast.presets import PAPER, default_steps
    from mimicfast.sampling import as_denoiser

    class Sized(torch.nn.Module):
        image_size, channels = 32, 3

        def forward(self, x, sigma):
            return x

    assert mimicfast.Purifier(Sized()).preset.steps == default_steps("paper", 32) == 100
    assert mimicfast.Purifier(lambda x, s: x).preset.steps == default_steps("paper", None) == 1000
    assert default_steps("paper", 256) == 1000 and default_steps("released", 32) == 100
    assert mimicfast.Purifier(Sized(), preset=PAPER).preset.steps == PAPER.steps == 1000
    assert mimicfast.Purifier(Sized(), steps=7).preset.steps == 7
    assert as_denoiser(Sized()).image_size == 32


def test_options_object_and_keywords_are_one_api(net, x) -> None:
    from mimicfast.api import PurifyOptions

    options = PurifyOptions.build(seed=4, **KW)
    torch.testing.assert_close(mimicfast.purify(x, net, options), mimicfast.purify(x, net, seed=4, **KW), rtol=0, atol=0)
    torch.testing.assert_close(mimicfast.Purifier(net, options)(x), mimicfast.purify(x, net, options), rtol=0, atol=0)
    with pytest.raises(InputError, match="not both"):
        mimicfast.purify(x, net, options, seed=1)
    with pytest.raises(InputError, match="PurifyOptions"):
        mimicfast.purify(x, net, {"seed": 1})
    with pytest.raises(AttributeError):
        options.seed = 5  # frozen
    for bad, match in ((dict(batch_size=0), "batch_size"), (dict(batch_size=True), "batch_size"),
                       (dict(progress="yes"), "progress"), (dict(autocast="int8"), "autocast"),
                       (dict(fast=1), "fast"), (dict(grad="exact"), "grad")):  # fmt: skip
        with pytest.raises(InputError, match=match):
            PurifyOptions.build(**bad)
