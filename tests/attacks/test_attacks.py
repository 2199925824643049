"""PGD-Linf and BPDA+EOT drive the bundled (undefended) classifier's accuracy down and respect the threat model."""

from __future__ import annotations

import pytest
import torch

from mimicfast.attacks import bpda_eot, pgd_linf
from mimicfast.default import load_default_classifier, load_test_slice
from mimicfast.errors import InputError
from mimicfast.evaluate import accuracy

EPS = 0.1


@pytest.fixture(scope="module")
def setup():
    classifier = load_default_classifier()
    x, y = load_test_slice(64)
    keep = classifier(x).argmax(1) == y  # attack only images the classifier gets right
    return classifier, x[keep][:8], y[keep][:8]


def _in_threat_model(x_adv, x):
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_pgd_drives_accuracy_down(setup):
    classifier, x, y = setup
    assert accuracy(classifier, x, y) == 1.0
    x_adv = pgd_linf(classifier, x, y, EPS, steps=10, seed=0)
    _in_threat_model(x_adv, x)
    assert accuracy(classifier, x_adv, y) <= 0.25
    torch.testing.assert_close(x_adv, pgd_linf(classifier, x, y, EPS, steps=10, seed=0))  # seeded


def test_pgd_with_zero_eps_is_identity(setup):
    classifier, x, y = setup
    torch.testing.assert_close(pgd_linf(classifier, x, y, 0.0, steps=2), x)


def test_bpda_eot_through_a_stochastic_purifier(setup):
    classifier, x, y = setup
    seeds = []

    def noisy_purifier(images, seed):
        # A randomized, non-differentiable "purifier": rounding plus seeded noise.
        seeds.append(seed)
        gen = torch.Generator().manual_seed(seed)
        noise = 0.02 * torch.randn(images.shape, generator=gen)
        return ((images + noise).clamp(0, 1) * 32).round() / 32

    x_adv = bpda_eot(classifier, noisy_purifier, x, y, EPS, steps=8, eot=2, seed=0)
    _in_threat_model(x_adv, x)
    assert len(seeds) == 16 and len(set(seeds)) == 16  # fresh purifier randomness for every draw
    assert min(seeds) >= 100_003  # disjoint from the defense's evaluation seeds 0, 1, ...
    assert accuracy(classifier, noisy_purifier(x_adv, 0), y) <= 0.25
    assert accuracy(classifier, noisy_purifier(x, 0), y) >= 0.75  # the purifier alone keeps the labels


def test_attacks_reject_bad_input(setup):
    classifier, x, y = setup
    with pytest.raises(InputError, match="one label per image"):
        pgd_linf(classifier, x, y[:2], EPS)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        pgd_linf(classifier, x * 2, y, EPS)
    with pytest.raises(InputError, match="eot"):
        bpda_eot(classifier, lambda a, s: a, x, y, EPS, eot=0)
