"""The purified-clean-accuracy yardstick of the bundled models: per-draw seeds, the two aggregates, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from mimicfast.api import purify
from mimicfast.classifier import FashionCNN
from mimicfast.evaluate.seeds import purpose_seeds
from mimicfast.models import guided_diffusion_unet
from mimicfast.train.ddpm import FMNIST_UNET_CONFIG
from mimicfast.train.purified import main, purified_clean_accuracy


def test_draws_use_the_evaluators_scoring_seeds_and_aggregate_them():
    torch.manual_seed(0)
    unet, classifier = guided_diffusion_unet(**FMNIST_UNET_CONFIG).eval(), FashionCNN(width=8).eval()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        preds = [classifier(purify(x, unet, preset="released", steps=2, seed=purpose_seeds(5, "defense", range(3), d)))
                 .argmax(1) for d in range(2)]
    y = preds[0].clone()
    y[0] = (y[0] + 1) % 10  # image 0 is wrong on draw 0, so it cannot be correct on both draws
    out = purified_clean_accuracy(unet, classifier, x, y, "released", steps=2, draws=2, seed=5)
    expected = [(p == y).double().mean().item() for p in preds]
    assert out["per_draw"] == expected
    assert out["mean"] == pytest.approx(sum(expected) / 2)
    assert out["all_draws"] == pytest.approx(((preds[0] == y) & (preds[1] == y)).double().mean().item())
    assert out["all_draws"] <= 2 / 3 and out["cpu_s_per_image"] > 0 and out["scale"] == 3000.0  # none declared and out["scale"] == 3000.0  # no declared scale


def test_the_yardstick_equals_the_evaluators_clean_rows(tmp_path):
    """Same draws as ``mimicfast eval``: all draws = its clean worst-of-N, draw 0 = its own-seed row."""
    from mimicfast.default import load_default, load_test_slice
    from mimicfast.evaluate import build_spec, run

    spec = build_spec(preset="released", attacks="clean", n=8, steps=2, draws=2, choice_draws=1, batch_size=4,
                      seed=3, threads=1, progress=False)
    rows = {r["protocol"]: r["accuracy"] for r in run(spec, tmp_path / "eval")["rows"] if r["attack"] == "clean"}
    unet, classifier = load_default()
    x, y = load_test_slice(8)
    out = purified_clean_accuracy(unet, classifier, x, y, "released", steps=2, draws=2, seed=3)
    assert out["all_draws"] == rows["worst"] and out["per_draw"][0] == rows["own"]


def test_cli_measures_the_shipped_pair(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["--n", "2", "--steps", "2", "--draws", "2", "--presets", "released", "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["n"] == 2 and set(result["released"]) == {"bare", "mean", "all_draws", "per_draw", "cpu_s_per_image", "scale"}
    assert "released" in capsys.readouterr().out


def test_default_loaders_take_another_file(tmp_path):
    from mimicfast.default import load_default_classifier, load_default_unet
    from mimicfast.train.common import export_safetensors

    net = FashionCNN(width=8)
    export_safetensors(net.state_dict(), tmp_path / "c.safetensors", config={"width": 8})
    loaded = load_default_classifier(path=tmp_path / "c.safetensors")
    assert loaded.width == 8
    torch.testing.assert_close(loaded.state_dict(), net.state_dict(), rtol=0, atol=0)
    unet = guided_diffusion_unet(**FMNIST_UNET_CONFIG)
    export_safetensors(unet.state_dict(), tmp_path / "u.safetensors",
                       config={"family": "guided_diffusion", **FMNIST_UNET_CONFIG})
    torch.testing.assert_close(load_default_unet(path=tmp_path / "u.safetensors").state_dict(), unet.state_dict(),
                               rtol=0, atol=0)
