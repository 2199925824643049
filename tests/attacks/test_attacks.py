"""The attacks of mimicfast.attacks: they break the bare bundled classifier, stay in the threat model, follow
their papers' formulas and the reference APGD's rules (checkpoints, step-size halving, random start, DLR, the EOT
gradient of the mean loss), treat each image on its own (image i seeded s + i), call the model a fixed number of
times, and pick the returned iterate by its success over several fresh draws of a stochastic model."""

from __future__ import annotations

import math

import pytest
import torch

from mimicfast.attacks import ATTACKS, apgd_checkpoints, dlr_loss, model_calls
from mimicfast.attacks.autopgd import StepSizeRule
from mimicfast.attacks.eot import eot_gradient
from mimicfast.attacks.losses import ce_loss
from mimicfast.attacks.projection import project
from mimicfast.attacks.random_start import random_start
from mimicfast.attacks.selection import select_final
from mimicfast.default import load_default_classifier, load_test_slice
from mimicfast.errors import InputError

LINF_EPS = 0.1
# L2 budget for 32x32 Fashion-MNIST: CIFAR-10's pair (Linf 8/255, L2 0.5) puts the L2 radius at 0.29 of the
# Linf ball's corner radius eps * sqrt(d); 0.29 * 0.1 * sqrt(32 * 32) = 0.92, rounded to 1.0.
L2_EPS = 1.0
# Small budgets keep each test well under 10 s on one thread; the attacks still reach ~0% (see docs).
BUDGETS = {
    "transfer": dict(steps=10),
    "pgd": dict(steps=10),
    "apgd-ce": dict(steps=20),
    "apgd-dlr": dict(steps=20),
    "aa-rand": dict(steps=10, eot=1),
    "cw": dict(steps=30, search_steps=2),
}


@pytest.fixture(scope="module")
def bare():
    classifier = load_default_classifier()
    x, y = load_test_slice(48)
    with torch.no_grad():
        keep = classifier(x).argmax(1) == y  # attack only images the classifier gets right
    return classifier, x[keep][:16], y[keep][:16]


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _in_threat_model(x_adv, x, eps, norm):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


# C&W minimises the L2 distortion, so it is held to ~0% in the L2 threat model only (under Linf 0.1 its
# smallest-L2 examples often exceed the Linf budget).
BREAK_CASES = [(name, norm) for name in sorted(ATTACKS) for norm in ("Linf", "L2") if (name, norm) != ("cw", "Linf")]


@pytest.mark.parametrize(("name", "norm"), BREAK_CASES)
def test_every_attack_breaks_the_bare_classifier(bare, name, norm):
    classifier, x, y = bare
    eps = LINF_EPS if norm == "Linf" else L2_EPS
    assert _accuracy(classifier, x, y) == 1.0
    x_adv = ATTACKS[name](classifier, x, y, eps=eps, norm=norm, seeds=list(range(len(x))), **BUDGETS[name])
    _in_threat_model(x_adv, x, eps, norm)
    assert _accuracy(classifier, x_adv, y) <= 1 / 16


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_respects_the_budget_and_the_box(norm):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=gen)
    far = x + 3 * torch.randn(x.shape, generator=gen)
    for eps in (0.0, 0.05, 0.7):
        p = project(far, x, eps, norm)
        _in_threat_model(p, x, eps, norm)
        torch.testing.assert_close(project(p, x, eps, norm), p)  # a point inside stays put
    torch.testing.assert_close(project(x, x, 0.0, norm), x)  # no 0/0 at d = 0


def test_apgd_checkpoints_follow_the_reference():
    # The reference's intervals: int(0.22 N), then each max(int(0.03 N), 1) shorter, never below
    # max(int(0.06 N), 1), every one at least 1; written out by hand for these N.
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(20) == [0, 4, 7, 9, *range(10, 21)]  # intervals 4, 3, 2, then 1
    assert apgd_checkpoints(50) == [0, 11, 21, 30, 38, 45]  # intervals 11, 10, 9, 8, 7 (6 would pass 50)
    assert apgd_checkpoints(10) == [0, 2, *range(3, 11)]  # intervals 2, then 1
    assert apgd_checkpoints(1) == [0, 1]


def _decisions(rule, losses):
    """Feed ``losses[w - 1] = f(x(w))`` (one list per image) to ``rule``; the halving decisions per checkpoint."""
    out = {}
    for w, f in enumerate(zip(*losses, strict=True), start=1):
        _, halve = rule.update(w, torch.tensor(f))
        if halve is not None:
            out[w] = halve.tolist()
    return out


def test_step_size_rule_matches_the_reference_on_a_scripted_loss_sequence():
    # 20 steps: checkpoints 4, 7, 9, 10, ... The decisions below are worked out by hand from the reference's rule.
    # Image A: the loss rises at every step: never halved.
    # Image B: w = 4: 3 increases in 4 steps, 3 <= 0.75 * 4 -> halve (Condition 1 is "<=": with "<" it would not).
    #   w = 5..7: 2.5 > 2 (f of the replaced iterate x(4), not f_max = 3), 2.8, 2.9: 3 increases > 2.25 -> keep
    #   (counting the first against f_max = 3 would give 2 <= 2.25 and halve). w = 9: 2 increases > 1.5, but no
    #   halving at 7 and f_max stayed 3 -> halve (Condition 2). w = 10: halved at 9 -> Condition 2 off; 1 > 0.75.
    a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    b = [1, 2, 3, 2, 2.5, 2.8, 2.9, 2.95, 2.99, 3.5]
    rule = StepSizeRule(torch.tensor([0.0, 0.0]), steps=20, rho=0.75)
    assert _decisions(rule, [a, b]) == {4: [False, True], 7: [False, False], 9: [False, True], 10: [False, False]}
    # Image C, rho = 0.5: w = 4: 3 increases (1 > f0 = 10 is not one) > 2, and f_max = f0 = 10 did not move, but
    # Condition 2 never fires at the first checkpoint -> keep. w = 7: 3 > 1.5; no halving at 4 and f_max still 10
    # -> halve. w = 9: 2 > 1, halved at 7 -> keep. w = 10: 1 > 0.5; no halving at 9, f_max still 10 -> halve.
    c = [1, 2, 3, 4, 5, 6, 7, 8, 9, 9.5]
    rule = StepSizeRule(torch.tensor([10.0]), steps=20, rho=0.5)
    assert _decisions(rule, [c]) == {4: [False], 7: [True], 9: [False], 10: [True]}


def test_step_size_rule_tracks_the_best_loss():
    rule = StepSizeRule(torch.tensor([1.0, 1.0]), steps=100, rho=0.75)
    assert rule.update(1, torch.tensor([2.0, 0.5]))[0].tolist() == [True, False]
    assert rule.update(2, torch.tensor([2.0, 1.5]))[0].tolist() == [False, True]  # strictly higher only
    torch.testing.assert_close(rule.f_max, torch.tensor([2.0, 1.5]))


def test_apgd_halves_and_restarts_from_the_best_point():
    # One pixel, x = 0.5, eps = 0.2; 4 steps: a checkpoint after every step. The model's loss is scripted per call
    # (1.0 at x(0), 0.5 at x(1)) and its gradient points to the centre. x(0) is on the edge (0.3 or 0.7), x(1) on
    # the opposite edge (step 2 eps = 0.4). At w = 1 the loss fell: halve (eta = 0.2) and restart from x(0) with
    # its gradient, no momentum (x(0) - x(0)): z = 0.5, x(2) = x(0) + 0.75 (0.5 - x(0)), 0.05 from the centre.
    script = iter([1.0, 0.5, 2.0, 2.0, 2.0] + [0.0] * 3)
    seen = []

    def model(images):
        v = images.flatten(1)
        seen.append(float(v[0, 0].detach()))
        toward_centre = torch.where(v.detach() < 0.5, 1.0, -1.0)
        z1 = next(script) + toward_centre * (v - v.detach())
        return torch.cat([torch.zeros_like(z1), z1], dim=1)

    ATTACKS["apgd-ce"](model, torch.full((1, 1, 1, 1), 0.5), torch.tensor([0]), eps=0.2, steps=4, seeds=0)
    assert math.isclose(abs(seen[0] - 0.5), 0.2, abs_tol=1e-6)
    assert math.isclose(seen[1], 1 - seen[0], abs_tol=1e-6)
    assert math.isclose(seen[2], seen[0] + 0.75 * (0.5 - seen[0]), abs_tol=1e-6)


def test_apgd_starts_on_the_edge_of_the_linf_ball():
    x = torch.full((3, 1, 4, 4), 0.5)  # far enough from 0 and 1 that the clip to [0, 1] does not bite
    start = random_start(x, 0.1, "Linf", [0, 1, 2], (7,), on_edge=True)
    torch.testing.assert_close((start - x).flatten(1).abs().amax(1), torch.full((3,), 0.1))
    inside = random_start(x, 0.1, "Linf", [0, 1, 2], (7,))
    assert float((inside - x).abs().max()) < 0.1  # PGD's start (Madry et al.) is uniform in the ball
    seen = []
    weight = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))

    def model(images):
        seen.append(images.detach().clone())
        return images.flatten(1) @ weight.T

    ATTACKS["apgd-ce"](model, x, torch.tensor([0, 1, 2]), eps=0.1, steps=1, seeds=4)
    torch.testing.assert_close((seen[0] - x).flatten(1).abs().amax(1), torch.full((3,), 0.1))


def test_dlr_loss_matches_its_definition():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0], [0.5, 4.0, -1.0, 2.0]])
    y = torch.tensor([0, 2, 3])
    # -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)
    expected = torch.tensor([-(3 - 2) / (3 - 1), -(2 - 3) / (3 - 1), -(2 - 4) / (4 - 0.5)])
    torch.testing.assert_close(dlr_loss(z, y), expected)
    torch.testing.assert_close(dlr_loss(2.5 * z - 7, y), expected)  # shift- and scale-invariant
    with pytest.raises(InputError, match="3 classes"):
        dlr_loss(z[:, :2], torch.tensor([0, 1, 0]))


SMALL = {
    "transfer": dict(steps=3),
    "pgd": dict(steps=3, eot=2),
    "apgd-ce": dict(steps=5, eot=2, restarts=2),
    "apgd-dlr": dict(steps=5, eot=2),
    "aa-rand": dict(steps=3, eot=2),
    "cw": dict(steps=4, search_steps=2, eot=2),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_image_attacked_alone_equals_it_attacked_in_a_batch(bare, name):
    classifier, x, y = bare
    x, y, seeds = x[:3], y[:3], [11, 5, 11]

    def per_row(images):  # the classifier row by row, so its own arithmetic cannot depend on the batch
        return torch.cat([classifier(images[i : i + 1]) for i in range(images.shape[0])])

    eps = 0.3 if name == "cw" else LINF_EPS
    norm = "L2" if name == "cw" else "Linf"
    rng = torch.get_rng_state()
    batch = ATTACKS[name](per_row, x, y, eps=eps, norm=norm, seeds=seeds, **SMALL[name])
    assert torch.equal(torch.get_rng_state(), rng)  # the attack's own randomness never uses the global RNG
    for i in range(3):
        alone = ATTACKS[name](per_row, x[i : i + 1], y[i : i + 1], eps=eps, norm=norm, seeds=[seeds[i]],
                              **SMALL[name])  # fmt: skip
        assert torch.equal(alone, batch[i : i + 1]), i
    from_int = ATTACKS[name](per_row, x, y, eps=eps, norm=norm, seeds=5, **SMALL[name])
    from_list = ATTACKS[name](per_row, x, y, eps=eps, norm=norm, seeds=[5, 6, 7], **SMALL[name])
    assert torch.equal(from_int, from_list)  # seeds=s: image i uses s + i


class _Linear(torch.nn.Module):
    """A fixed linear classifier on 1x4x4 images, 5 classes, that counts its calls and their batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return x.flatten(1) @ self.weight.T


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_model_is_called_a_fixed_number_of_times_on_the_whole_batch(name):
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 5
    model = _Linear()
    ATTACKS[name](model, x, y, eps=0.2, seeds=list(range(6)), **SMALL[name])
    kw = {k: v for k, v in SMALL[name].items()}
    if name.startswith("apgd"):
        kw["loss"] = name[5:]
    assert len(model.rows) == model_calls(name, **kw)
    assert set(model.rows) == {6}
    eot = SMALL[name].get("eot", 1)
    if name == "pgd":
        assert len(model.rows) == 3 * eot + 3 * eot  # steps x eot gradients + 3 candidates x eot fresh draws


def test_eot_gradient_is_the_gradient_of_the_mean_loss():
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(3, 4, generator=gen) * 10**c for c in range(4)]  # draws of very different sizes
    x = torch.rand(5, 1, 2, 2, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1])
    calls = iter(weights)
    grad, loss, success = eot_gradient(lambda images: images.flatten(1) @ next(calls).T, x, y, ce_loss, eot=4)
    xi = x.clone().requires_grad_(True)
    mean_loss = sum(ce_loss(xi.flatten(1) @ w.T, y) for w in weights) / 4
    (expected,) = torch.autograd.grad(mean_loss.sum(), xi)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(loss, mean_loss.detach())
    wrong = sum(((x.flatten(1) @ w.T).argmax(1) != y).float() for w in weights) / 4
    torch.testing.assert_close(success, wrong)


def test_eot_gradient_normalized_weighs_every_draw_equally():
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(3, 4, generator=gen) for _ in range(4)]  # call c uses weights[c]: a "random" model
    x = torch.rand(5, 1, 2, 2, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1])
    calls = iter(weights)

    def model(images):
        return images.flatten(1) @ next(calls).T

    grad, loss, success = eot_gradient(model, x, y, ce_loss, eot=4, eot_grad="normalized")
    per_call = []
    for w in weights:
        xi = x.clone().requires_grad_(True)
        logits = xi.flatten(1) @ w.T
        (g,) = torch.autograd.grad(ce_loss(logits, y).sum(), xi)
        per_call.append((g, ce_loss(logits, y).detach(), (logits.argmax(1) != y).float()))
    norms = [p[0].flatten(1).norm(dim=1).view(-1, 1, 1, 1) for p in per_call]
    direction = sum(p[0] / n for p, n in zip(per_call, norms, strict=True)) / 4
    torch.testing.assert_close(grad, direction * sum(norms) / 4)
    torch.testing.assert_close(loss, sum(p[1] for p in per_call) / 4)
    torch.testing.assert_close(success, sum(p[2] for p in per_call) / 4)


@pytest.mark.parametrize("eot_grad", ["mean", "normalized"])
def test_eot_gradient_of_one_draw_is_the_gradient(eot_grad):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 4, generator=gen)
    x = torch.rand(5, 1, 2, 2, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1])
    grad, _, _ = eot_gradient(lambda images: images.flatten(1) @ w.T, x, y, ce_loss, eot=1, eot_grad=eot_grad)
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ce_loss(xi.flatten(1) @ w.T, y).sum(), xi)
    torch.testing.assert_close(grad, g)


def test_eot_gradient_normalized_is_not_one_large_draw():
    x = torch.zeros(1, 1, 1, 2)
    y = torch.tensor([0])
    scales = iter([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1000.0])])  # draw 2 is 1000x larger, orthogonal

    def model(images):
        s = next(scales)
        v = (images.flatten(1) * s).sum(1, keepdim=True)
        return torch.cat([-v, v], dim=1)

    grad, _, _ = eot_gradient(model, x, y, ce_loss, eot=2, eot_grad="normalized")
    g = grad.flatten()
    assert g[0] > 0 and g[1] > 0
    torch.testing.assert_close(g[0], g[1])  # both draws weigh the same in the direction


def _lucky_model(p_of_v):
    """A stochastic 2-class model on one pixel v: misclassified on each call with probability ``p_of_v(v)``
    (fresh torch.rand per call); its gradient always pushes v up (straight-through surrogate)."""

    def model(x):
        v = x.flatten(1)[:, 0]
        wrong = torch.rand(v.shape) < p_of_v(v.detach())
        z1 = torch.where(wrong, 1.0, -1.0) + (v - v.detach())
        return torch.stack([torch.zeros_like(z1), z1], dim=1)

    return model


def test_the_returned_iterate_is_chosen_by_its_success_over_several_draws():
    # PGD climbs from a random start in [0, 1] to the ball's edge v = 1 and stays there. Iterates with
    # v in [0.6, 0.999) fool the model on 90% of its calls, the edge (the last iterate) on 10%, so one lucky
    # call makes the edge look adversarial; 8 draws per iterate and 8 fresh draws per candidate do not.
    def p_of_v(v):
        return torch.where((v >= 0.6) & (v < 0.999), 0.9, 0.1)

    torch.manual_seed(0)
    x = torch.full((16, 1, 1, 1), 0.5)
    y = torch.zeros(16, dtype=torch.int64)
    x_adv = ATTACKS["pgd"](_lucky_model(p_of_v), x, y, eps=0.5, steps=10, eot=8, seeds=list(range(16)))
    assert bool((p_of_v(x_adv.flatten()) == 0.9).all())


def test_select_final_prefers_the_candidate_that_succeeds_more_often():
    torch.manual_seed(0)
    model = _lucky_model(lambda v: torch.where(v > 0.5, 0.3, 0.8))
    strong, weak = torch.full((32, 1, 1, 1), 0.2), torch.full((32, 1, 1, 1), 0.9)
    y = torch.zeros(32, dtype=torch.int64)
    chosen, success = select_final(model, y, [weak, strong], lambda z, t: -z[:, 1], draws=20)
    assert float((chosen == strong).float().mean()) >= 0.9
    assert 0.6 <= float(success.mean()) <= 1.0


def test_attacks_reject_bad_input(bare):
    classifier, x, y = bare
    with pytest.raises(InputError, match="one int64 label per image"):
        ATTACKS["pgd"](classifier, x, y[:2], eps=LINF_EPS)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        ATTACKS["pgd"](classifier, x * 2, y, eps=LINF_EPS)
    with pytest.raises(InputError, match="eot"):
        ATTACKS["apgd-ce"](classifier, x, y, eps=LINF_EPS, eot=0)
    with pytest.raises(InputError, match="finite"):
        ATTACKS["apgd-ce"](classifier, x, y, eps=math.inf)
    with pytest.raises(InputError, match="norm"):
        ATTACKS["apgd-dlr"](classifier, x, y, eps=LINF_EPS, norm="L1")
    with pytest.raises(InputError, match="seeds"):
        ATTACKS["aa-rand"](classifier, x, y, eps=LINF_EPS, seeds=[0, 1])
    with pytest.raises(InputError, match="grad="):
        ATTACKS["pgd"](lambda images: classifier(images).detach(), x, y, eps=LINF_EPS)
    with pytest.raises(InputError, match="unknown attack"):
        model_calls("fgsm", steps=1)
    for name in ("pgd", "apgd-ce", "aa-rand", "cw"):
        with pytest.raises(InputError, match="eot_grad"):
            ATTACKS[name](classifier, x, y, eps=LINF_EPS, steps=1, eot_grad="median")
    with pytest.raises(InputError, match="rho"):
        ATTACKS["apgd-ce"](classifier, x, y, eps=LINF_EPS, rho=0)
    with pytest.raises(InputError, match="loss"):
        ATTACKS["aa-rand"](classifier, x, y, eps=LINF_EPS, loss="ce")


def test_cw_without_a_budget_is_the_minimum_norm_attack(bare):
    classifier, x, y = bare
    x_adv = ATTACKS["cw"](classifier, x[:4], y[:4], eps=math.inf, steps=20, search_steps=2)
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert _accuracy(classifier, x_adv, y[:4]) == 0.0


def test_zero_budget_returns_the_clean_images(bare):
    classifier, x, y = bare
    for name in ("pgd", "apgd-ce"):
        torch.testing.assert_close(ATTACKS[name](classifier, x, y, eps=0.0, steps=2), x)


def test_attacks_run_through_the_purifier(bare):
    import mimicfast
    from tests.helpers import TinyEpsNet

    classifier, x, y = bare
    unet = TinyEpsNet(channels=1, image_size=32)  # any diffusion model; a tiny one keeps the test fast
    defended = torch.nn.Sequential(mimicfast.Purifier(unet, steps=1, seed=None, grad="bpda"), classifier)
    x_adv = ATTACKS["pgd"](defended, x[:1], y[:1], eps=LINF_EPS, steps=1, seeds=[0])
    _in_threat_model(x_adv, x[:1], LINF_EPS, "Linf")
    assert not torch.equal(x_adv, x[:1])
    undefended_grad = torch.nn.Sequential(mimicfast.Purifier(unet, steps=1, seed=None), classifier)
    with pytest.raises(InputError, match="grad="):
        ATTACKS["pgd"](undefended_grad, x[:1], y[:1], eps=LINF_EPS, steps=1)


class _NoisyRows:
    """A stochastic float64 classifier on 1x4x4 images: row r of call c adds noise seeded by (its image index, c),
    computed row by row; ``restrict_rows`` gives a subset of rows the draws of a whole-batch call."""

    weight = torch.randn(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def __init__(self, indices: list[int], sizes: list[int], calls: int = 0) -> None:
        self.indices, self.sizes, self.calls = list(indices), sizes, calls

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        copies = x.shape[0] // len(self.indices)
        noise = torch.stack([torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(
            1000 * (self.calls + c) + i)) for c in range(copies) for i in self.indices])
        self.calls += copies
        self.sizes.append(x.shape[0])
        return (x.flatten(1)[:, None, :] + 0.5 * noise[:, None, :]).mul(self.weight).sum(-1)

    def restrict_rows(self, rows: list[int]) -> _NoisyRows:
        return _NoisyRows([self.indices[r] for r in rows], self.sizes, self.calls)


def test_aa_rand_skips_dlr_where_ce_always_succeeded_with_the_same_result():
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = (x.flatten(1)[:, None, :] * _NoisyRows.weight).sum(-1).argmax(1)  # the noise-free prediction
    kw = dict(eps=0.1, steps=4, eot=2, seeds=list(range(8)))  # CE fools images 1, 3, 4, 6 on every fresh call
    sizes: list[int] = []
    skipping = ATTACKS["aa-rand"](_NoisyRows(list(range(8)), sizes), x, y, **kw)
    whole: list[int] = []
    model = _NoisyRows(list(range(8)), whole)
    every = ATTACKS["aa-rand"](lambda images: model(images), x, y, **kw)  # no restrict_rows: DLR on every image
    assert torch.equal(skipping, every)
    assert set(whole) == {8} and len(whole) == model_calls("aa-rand", steps=4, eot=2)
    assert 0 < min(sizes) < 8 and len(sizes) == len(whole)  # DLR ran on the images CE did not always fool
