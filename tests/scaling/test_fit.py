"""The fits recover known laws from synthetic ladders and refuse ladders that cannot support them."""
import math

import numpy as np
import pytest

from gpt3lab.scaling import fit

# a Chinchilla-form loss with alpha = beta, so N_opt ∝ C^0.5 and D_opt ∝ C^0.5 exactly
E, A, B, ALPHA = 1.69, 406.4, 410.7, 0.30


def loss(n, d):
    return E + A * n ** -ALPHA + B * d ** -ALPHA


def n_opt(c):
    return (A / B) ** (1 / (2 * ALPHA)) * (c / 6) ** 0.5


def synthetic(budgets, offsets, noise=0.0, seed=0):
    """Runs at N = n_opt(C)·e^offset, D = C / 6N (FLOPs per token 6N), loss(N, D) (+ relative noise)."""
    rng = np.random.default_rng(seed)
    runs = []
    for c in budgets:
        for k in offsets:
            n = n_opt(c) * math.exp(k)
            runs.append(fit.Run(c, n, 6 * n, loss(n, c / (6 * n)) * (1 + noise * rng.standard_normal())))
    return runs


BUDGETS = np.geomspace(1e17, 1e21, 5)
# L_opt(C) = E + 2·sqrt(AB)·6^(alpha/2)·C^(-alpha/2): the frontier's true A and alpha
A_TRUE, ALPHA_TRUE = 2 * math.sqrt(A * B) * 6 ** (ALPHA / 2), ALPHA / 2


@pytest.mark.parametrize("offsets", [np.linspace(-1.2, 1.2, 7), [-1.0, -0.6, -0.1, 0.4, 0.7, 1.3]],
                         ids=["symmetric", "uneven"])
def test_recovers_exponents_and_frontier(offsets):
    f = fit.fit_ladder(synthetic(BUDGETS, offsets), bootstrap=0)
    laws = {k: v["value"] for k, v in f["laws"].items()}
    assert laws["a"] == pytest.approx(0.5, abs=0.02)
    assert laws["b"] == pytest.approx(0.5, abs=0.02)
    assert laws["E"] == pytest.approx(E, rel=0.05)
    assert laws["A"] == pytest.approx(A_TRUE, rel=0.05)
    assert laws["alpha"] == pytest.approx(ALPHA_TRUE, rel=0.05)


def test_noisy_ladder_intervals_cover_the_truth_and_predict():
    runs = synthetic(BUDGETS, np.linspace(-1.2, 1.2, 7), noise=0.002, seed=1)
    f = fit.fit_ladder(runs, predict=[1e23], bootstrap=200, seed=0)
    lo, hi = f["laws"]["a"]["ci95"]
    assert lo < 0.5 < hi and hi - lo < 0.1
    true_loss = loss(n_opt(1e23), 1e23 / (6 * n_opt(1e23)))
    assert f["predictions"][0]["loss"]["value"] == pytest.approx(true_loss, rel=0.02)
    # same seed, same numbers
    assert fit.fit_ladder(runs, predict=[1e23], bootstrap=200, seed=0) == f


def test_holdout_predicts_the_largest_budget():
    h = fit.holdout(synthetic(BUDGETS, np.linspace(-1.2, 1.2, 7)), bootstrap=0)
    assert h["budget"] == BUDGETS[-1]
    assert abs(h["error"]) < 0.003


def test_too_few_sizes_is_a_clear_error():
    runs = [r for r in synthetic(BUDGETS[:1], [-1.0, 0.0, 1.0])][:2]
    with pytest.raises(fit.FitError, match="at least 3 sizes per budget"):
        fit.fit_ladder(runs)


@pytest.mark.parametrize("offsets, side", [([0.0, 0.8, 1.6, 2.4], "below"), ([-2.4, -1.6, -0.8, 0.0], "above"),
                                           ([0.5, 1.0, 1.5, 2.0], "below"), ([-2.0, -1.5, -0.2], "above")])
def test_minimum_at_the_edge_says_which_way_to_extend(offsets, side):
    with pytest.raises(fit.FitError, match=f"extend the ladder {side}"):
        fit.fit_ladder(synthetic(BUDGETS[:2], offsets))


def test_frontier_needs_three_budgets_and_holdout_four():
    f = fit.fit_ladder(synthetic(BUDGETS[:2], [-1, 0, 1]), bootstrap=0)
    assert "a" in f["laws"] and "E" not in f["laws"]
    with pytest.raises(fit.FitError, match="3 or more budgets"):
        fit.loss_frontier(BUDGETS[:2], [3.0, 2.9])
    with pytest.raises(fit.FitError, match="4 or more budgets"):
        fit.holdout(synthetic(BUDGETS[:3], [-1, 0, 1]))


def test_an_edge_budget_can_be_left_out_and_is_named():
    runs = synthetic(BUDGETS[:3], np.linspace(-1.2, 1.2, 7)) + synthetic(BUDGETS[3:4], [0.5, 1.0, 1.5])
    f = fit.fit_ladder(runs, bootstrap=0, exclude_edges=True)
    assert [o["budget"] for o in f["optima"]] == list(BUDGETS[:3])
    assert f["excluded"][0]["budget"] == BUDGETS[3] and "extend the ladder below" in f["excluded"][0]["reason"]
    assert f["laws"]["a"]["value"] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(fit.FitError, match="4 or more budgets"):
        fit.holdout(runs, exclude={BUDGETS[3]})
