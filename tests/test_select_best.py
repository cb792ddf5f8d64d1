"""select_best (docs/method.md §4) on constructed rates: hand-made edge cases, and many random cases
against a brute-force statement of the authors' rules written here (rates on a coarse grid, so that
ties and equalities with the base model's and UCE's rates are frequent)."""
from __future__ import annotations

import random

import pytest

from utils.erase.rece import select_best


def brute_force(metric, rates, epochs, has_uce, other):
    """The rules as the docstring of docs/method.md §4 states them, one candidate at a time."""
    fallback = "uce" if has_uce else None
    if metric in (None, "style_rate"):
        return f"epoch_{epochs}" if epochs else fallback
    validated = [k for k in range(1, epochs + 1) if f"epoch_{k}" in rates]
    best = None
    if metric == "target_accuracy":
        ref = "uce" if has_uce else "base"
        if has_uce and rates["uce"] == 0:
            return "uce"
        for k in validated:   # the run stops at the first epoch at 0
            if rates[f"epoch_{k}"] == 0:
                return f"epoch_{k}"
        for k in validated:
            t, o = rates[f"epoch_{k}"], other[f"epoch_{k}"]
            if t < rates[ref] and round(o - (other[ref] - 0.1), 9) >= 0:
                if best is None or t < rates[f"epoch_{best}"]:
                    best = k
    else:
        for k in validated:
            r = rates[f"epoch_{k}"]
            if r < rates["base"] and (not has_uce or r < rates["uce"]):
                if best is None or r < rates[f"epoch_{best}"]:
                    best = k
    return fallback if best is None else f"epoch_{best}"


def best_epoch(best):
    return None if best is None else 0 if best == "uce" else int(best.split("_")[1])


@pytest.mark.parametrize("metric", ["nudity_rate", "q16_rate", "concept_rate", "target_accuracy", "style_rate",
                                    None])
def test_random_cases_follow_the_rules(metric):
    rng = random.Random(str(metric))
    grid = [0.0, 0.1, 0.2, 0.3, 0.7, 0.8]
    for _ in range(300):
        epochs = rng.randint(0, 4)
        has_uce = rng.random() < 0.7
        names = ["base"] + (["uce"] if has_uce else []) + [f"epoch_{k}" for k in range(1, epochs + 1)
                                                            if rng.random() < 0.85]
        rates = {n: rng.choice(grid) for n in names}
        other = {n: rng.choice(grid) for n in names}
        if metric is None:
            rates, other = {}, None
        got = select_best(metric, rates, epochs, has_uce, other)
        expected = brute_force(metric, rates, epochs, has_uce, other)
        assert got["best"] == expected, (metric, rates, other, epochs, has_uce, got)
        assert got["best_epoch"] == best_epoch(expected)
        assert got["rule"] and got["reason"]


def test_only_validated_epochs_within_the_run_count():
    rates = {"base": 0.5, "uce": 0.4, "epoch_2": 0.3, "epoch_4": 0.0}   # epoch 1 not validated; 4 > epochs
    assert select_best("nudity_rate", rates, 3, True)["best"] == "epoch_2"
    assert select_best("target_accuracy", rates, 3, True,
                       {"base": 0.8, "uce": 0.8, "epoch_2": 0.8, "epoch_4": 0.8})["best"] == "epoch_2"


def test_rate_rule_reason_names_the_bar():
    got = select_best("nudity_rate", {"base": 0.25, "uce": 0.5, "epoch_1": 0.2}, 1, True)
    assert got == {"best": "epoch_1", "best_epoch": 1, "rule": got["rule"],
                   "reason": "epoch 1 has the lowest rate, below min(base, UCE) = 0.2500"}
    got = select_best("nudity_rate", {"base": 0.25, "uce": 0.125, "epoch_1": 0.2}, 1, True)
    assert got["best"] == "uce" and got["reason"] == "no epoch's rate is below min(base, UCE) = 0.1250; UCE is kept"
    got = select_best("nudity_rate", {"base": 0.25, "epoch_1": 0.3}, 1, False)
    assert got["best"] is None and got["reason"].endswith("there is no checkpoint to keep")


def test_object_rule_edges():
    # other-class accuracy exactly UCE's minus 0.1 qualifies despite float rounding (0.8 - 0.1 > 0.7)
    assert 0.8 - 0.1 > 0.7
    t = {"base": 0.9, "uce": 0.5, "epoch_1": 0.4}
    assert select_best("target_accuracy", t, 1, True, {"base": 0.8, "uce": 0.8, "epoch_1": 0.7})["best"] == "epoch_1"
    assert select_best("target_accuracy", t, 1, True,
                       {"base": 0.8, "uce": 0.8, "epoch_1": 0.7 - 1e-6})["best"] == "uce"
    # without UCE the base model is the reference (its target and other-class accuracies)
    t = {"base": 0.5, "epoch_1": 0.4, "epoch_2": 0.45}
    o = {"base": 0.6, "epoch_1": 0.4, "epoch_2": 0.55}
    got = select_best("target_accuracy", t, 2, False, o)
    assert got["best"] == "epoch_2" and "base's" in got["rule"]
    got = select_best("target_accuracy", {"base": 0.5, "epoch_1": 0.6}, 1, False, {"base": 0.6, "epoch_1": 0.6})
    assert got["best"] is None and got["best_epoch"] is None
    assert got["reason"] == ("no epoch has a target accuracy below base's (0.5000) with other-class accuracy at "
                             "least 0.5000; there is no checkpoint to keep")
    # ties: the earliest epoch of the lowest target accuracy
    t = {"base": 0.9, "uce": 0.5, "epoch_1": 0.3, "epoch_2": 0.2, "epoch_3": 0.2}
    o = {k: 0.8 for k in t}
    assert select_best("target_accuracy", t, 3, True, o)["best_epoch"] == 2
    # an epoch at 0 stops the run even when an earlier one qualified
    t = {"base": 0.9, "uce": 0.5, "epoch_1": 0.1, "epoch_2": 0.0}
    o = {"base": 0.8, "uce": 0.8, "epoch_1": 0.8, "epoch_2": 0.0}
    got = select_best("target_accuracy", t, 2, True, o)
    assert got["best"] == "epoch_2" and "target accuracy 0" in got["reason"]
    # UCE at 0 without UCE (has_uce False): the base at 0 does not count as UCE
    got = select_best("target_accuracy", {"base": 0.0, "epoch_1": 0.0}, 1, False, {"base": 0.8, "epoch_1": 0.8})
    assert got["best"] == "epoch_1"


def test_last_epoch_rules():
    for metric in (None, "style_rate"):
        got = select_best(metric, {"base": 0.0, "uce": 0.0, "epoch_1": 1.0, "epoch_2": 1.0}, 2, True)
        assert (got["best"], got["best_epoch"]) == ("epoch_2", 2) and got["reason"] == "epoch 2 is the last epoch"
        got = select_best(metric, {}, 0, True)
        assert (got["best"], got["best_epoch"]) == ("uce", 0)
        assert got["reason"] == "0 epochs: the start checkpoint is kept"
        got = select_best(metric, {}, 0, False)
        assert (got["best"], got["best_epoch"]) == (None, None)
        assert got["reason"] == "0 epochs and no start checkpoint: nothing to keep"
    assert select_best(None, {}, 1, True)["rule"].startswith("no validation")
    assert select_best("style_rate", {}, 1, True)["rule"].startswith("art:")
