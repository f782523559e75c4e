"""Every gate over its edge cases, with tiny arrays and no I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines import gates as g
from pipelines.config.base import GateMode
from pipelines.config.training import Bound, ComparisonRule
from pipelines.metrics import Predictions, Undefined

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 400)
# A decent model: scores correlated with the label.
GOOD_SCORES = np.clip(Y * 0.6 + RNG.normal(0.2, 0.2, Y.size), 0, 1)
GOOD = Predictions(values=(GOOD_SCORES > 0.5).astype(int), scores=GOOD_SCORES)
# A much worse model: mostly noise.
BAD_SCORES = np.clip(Y * 0.1 + RNG.uniform(0, 0.9, Y.size), 0, 1)
BAD = Predictions(values=(BAD_SCORES > 0.5).astype(int), scores=BAD_SCORES)
# A clearly better model: almost perfectly separates the classes.
BEST_SCORES = np.clip(Y * 0.9 + RNG.normal(0.05, 0.05, Y.size), 0, 1)
BEST = Predictions(values=(BEST_SCORES > 0.5).astype(int), scores=BEST_SCORES)


def _champion(candidate: Predictions, champion: Predictions | None, rules=None) -> g.GateResult:
    return g.champion_gate(
        Y,
        candidate,
        champion,
        rules or {"roc_auc": ComparisonRule(max_regression=0.01)},
        champion_version="3" if champion is not None else None,
        confidence=0.95,
        n_resamples=300,
        seed=1,
    )


# --------------------------------------------------------------------------- holdout


@pytest.mark.parametrize(
    ("value", "bound", "outcome"),
    [
        (0.95, Bound(min=0.9), g.Outcome.PASSED),
        (0.90, Bound(min=0.9), g.Outcome.PASSED),
        (0.89, Bound(min=0.9), g.Outcome.FAILED),
        (0.10, Bound(max=0.2), g.Outcome.PASSED),
        (0.30, Bound(max=0.2), g.Outcome.FAILED),
        (0.50, Bound(min=0.1, max=0.4), g.Outcome.FAILED),
        (math.nan, Bound(min=0.9), g.Outcome.FAILED),
    ],
)
def test_holdout_gate_bounds(value: float, bound: Bound, outcome: g.Outcome) -> None:
    """It passes a metric inside its bounds and fails one outside, or one that is NaN."""
    result = g.holdout_gate({"roc_auc": value}, {"roc_auc": bound})
    assert result.outcome is outcome
    assert result.reasons and result.reasons[0].startswith("roc_auc:")


def test_holdout_gate_missing_metric_fails() -> None:
    """It fails, naming the metric, when a declared metric was not computed."""
    result = g.holdout_gate({"accuracy": 0.99}, {"roc_auc": Bound(min=0.5)})
    assert result.outcome is g.Outcome.FAILED
    assert "roc_auc: not computed" in result.reasons[0]


# --------------------------------------------------------------------------- champion


def test_champion_gate_candidate_better_passes() -> None:
    """It passes a candidate that beats the champion, with a positive gain and its interval."""
    result = _champion(BEST, GOOD)
    assert result.outcome is g.Outcome.PASSED
    assert result.metrics["roc_auc_gain"] > 0
    low, high = result.metrics["roc_auc_gain_ci"]
    assert low <= result.metrics["roc_auc_gain"] <= high


def test_champion_gate_equal_passes() -> None:
    """It passes a candidate identical to the champion: gain and interval are exactly zero."""
    result = _champion(GOOD, GOOD)
    assert result.outcome is g.Outcome.PASSED
    assert result.metrics["roc_auc_gain"] == 0.0
    assert result.metrics["roc_auc_gain_ci"] == [0.0, 0.0]


def test_champion_gate_worse_fails() -> None:
    """It refuses a candidate clearly worse than the champion, saying by how much."""
    result = _champion(BAD, GOOD)
    assert result.outcome is g.Outcome.FAILED
    assert "does not meet a loss of at most 0.01" in result.reasons[0]
    assert result.baseline["champion_version"] == "3"


def test_champion_gate_no_champion_is_skipped() -> None:
    """With no champion it is skipped and says the absolute gates decide."""
    result = _champion(GOOD, None)
    assert result.outcome is g.Outcome.SKIPPED
    assert "absolute gates decide" in result.reasons[0]


def test_champion_gate_nan_metric_fails() -> None:
    """It fails when a metric is NaN (a classifier without scores cannot have a ROC AUC)."""
    no_scores = Predictions(values=GOOD.values, scores=None)
    result = _champion(no_scores, GOOD)
    assert result.outcome is g.Outcome.FAILED
    assert "cannot compare" in result.reasons[0]


def test_champion_gate_min_improvement_needs_a_sure_gain() -> None:
    """A rule demanding a gain refuses an equal candidate and accepts a clearly better one."""
    rules = {"roc_auc": ComparisonRule(min_improvement=0.005)}
    assert _champion(GOOD, GOOD, rules).outcome is g.Outcome.FAILED
    assert _champion(BEST, GOOD, rules).outcome is g.Outcome.PASSED


def test_champion_gate_noise_does_not_flip_a_small_difference() -> None:
    """A candidate a hair worse by chance passes non-inferiority; a point estimate is not enough."""
    jitter = np.clip(GOOD_SCORES + RNG.normal(0, 0.02, Y.size), 0, 1)
    noisy = Predictions(values=(jitter > 0.5).astype(int), scores=jitter)
    result = _champion(noisy, GOOD, {"roc_auc": ComparisonRule(max_regression=0.02)})
    assert result.outcome is g.Outcome.PASSED
    assert abs(result.metrics["roc_auc_gain"]) < 0.02


def test_paired_bootstrap_lower_is_better_metric_sign() -> None:
    """For a lower-is-better metric (log loss) a better candidate still has a positive gain."""
    ci = g.paired_bootstrap_gain("log_loss", Y, BEST, GOOD, confidence=0.9, n_resamples=200, seed=0)
    assert ci.gain > 0 and ci.low > 0


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("mode", "outcome", "blocking", "ran"),
    [
        (GateMode.ENABLED, g.Outcome.FAILED, True, True),
        (GateMode.DRY_RUN, g.Outcome.FAILED, False, True),
        (GateMode.DISABLED, g.Outcome.SKIPPED, False, False),
    ],
)
def test_apply_mode(mode: GateMode, outcome: g.Outcome, blocking: bool, ran: bool) -> None:
    """A failing gate blocks when enabled, reports without blocking in dry_run, never runs when disabled."""
    calls = []

    def evaluate() -> g.GateResult:
        calls.append(1)
        return _champion(BAD, GOOD)

    result = g.apply_mode("champion", mode, evaluate)
    assert result.outcome is outcome
    assert result.blocking is blocking
    assert result.mode is mode
    assert bool(calls) is ran


# --------------------------------------------------------------------------- reproducibility

SAME = g.Provenance("abc123", "cfg", "data")


def test_reproducibility_identical_passes() -> None:
    """Bit-identical predictions from the same inputs pass and are reported as identical."""
    result = g.reproducibility_gate(SAME, SAME, GOOD, GOOD, tolerance=0.0)
    assert result.outcome is g.Outcome.PASSED
    assert result.metrics["identical"] is True
    assert "identical" in result.reasons[-1]


def test_reproducibility_within_tolerance_says_so() -> None:
    """Tiny differences within the tolerance pass, and the result says they are not identical."""
    shifted = Predictions(values=GOOD.values, scores=GOOD.scores + 1e-9)
    result = g.reproducibility_gate(SAME, SAME, GOOD, shifted, tolerance=1e-6)
    assert result.outcome is g.Outcome.PASSED
    assert result.metrics["identical"] is False
    assert "within tolerance" in result.reasons[-1]


def test_reproducibility_different_predictions_fail() -> None:
    """Predictions that differ beyond the tolerance fail: the model is not reproducible."""
    result = g.reproducibility_gate(SAME, SAME, GOOD, BAD, tolerance=1e-6)
    assert result.outcome is g.Outcome.FAILED
    assert "not reproducible" in result.reasons[-1]


@pytest.mark.parametrize("field", ["git_commit", "config_hash", "data_hash"])
def test_reproducibility_different_inputs_fail(field: str) -> None:
    """A retrain from another commit, config or dataset proves nothing and fails, naming the input."""
    other = g.Provenance(**{**SAME.__dict__, field: "zzz999"})
    result = g.reproducibility_gate(SAME, other, GOOD, GOOD, tolerance=0.0)
    assert result.outcome is g.Outcome.FAILED
    assert result.reasons[0].startswith(f"{field} differs")


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ({"a": "double", "b": "long"}, []),
        ({"a": "double"}, ["'b' (long) was removed"]),
        ({"a": "double", "b": "long", "c": "double"}, ["new required input feature 'c'"]),
        ({"a": "double", "b": "double"}, ["'b' changed type long → double"]),
        ({"a": "double", "bb": "long"}, ["'b' (long) was removed", "possible rename"]),
    ],
)
def test_schema_gate(candidate: dict[str, str], expected: list[str]) -> None:
    """Removed, added, retyped and renamed inputs are breaking; the same inputs are compatible."""
    result = g.schema_gate(candidate, {"a": "double", "b": "long"})
    assert result.outcome is (g.Outcome.FAILED if expected else g.Outcome.PASSED)
    text = " ".join(result.reasons)
    for fragment in expected:
        assert fragment in text


def test_schema_gate_without_champion_is_skipped() -> None:
    """With no champion there is nothing to break: the gate is skipped."""
    assert g.schema_gate({"a": "double"}, None).outcome is g.Outcome.SKIPPED


# --------------------------------------------------------------------------- latency


@pytest.mark.parametrize(
    ("single", "batch", "outcome"),
    [
        (1.0, 10.0, g.Outcome.PASSED),
        (5.0, 10.0, g.Outcome.PASSED),
        (5.1, 10.0, g.Outcome.FAILED),
        (1.0, 50.1, g.Outcome.FAILED),
        (math.nan, 1.0, g.Outcome.FAILED),
    ],
)
def test_latency_gate(single: float, batch: float, outcome: g.Outcome) -> None:
    """Medians at or under their budgets pass; over a budget, or unmeasured, fail."""
    result = g.latency_gate(single, batch, batch_size=100, max_single_row_ms=5.0, max_batch_ms=50.0)
    assert result.outcome is outcome


# --------------------------------------------------------------------------- data checks


@pytest.mark.parametrize(
    ("p_values", "missing", "outcome"),
    [
        ({"a": 0.5, "b": 0.9}, 0.0, g.Outcome.PASSED),
        ({"a": 0.01, "b": 0.9}, 0.0, g.Outcome.PASSED),  # 50 % drifted is the limit
        ({"a": 0.01, "b": 0.001, "c": 0.9}, 0.0, g.Outcome.FAILED),
        ({"a": 0.5}, 0.02, g.Outcome.FAILED),
    ],
)
def test_data_checks_gate(p_values: dict[str, float], missing: float, outcome: g.Outcome) -> None:
    """Too large a share of drifted features, or too many missing values, fails the gate."""
    result = g.data_checks_gate(
        p_values,
        missing,
        drift_threshold=0.05,
        max_drifted_share=0.5,
        max_missing_share=0.0,
        report_path=None,
    )
    assert result.outcome is outcome


# --------------------------------------------------------------------------- k classes

K_CLASSES = np.array(["a", "b", "c"], dtype=object)
K_Y = K_CLASSES[RNG.integers(0, 3, 300)]


def _k_class_predictions(noise: float, seed: int) -> Predictions:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, noise, (K_Y.size, 3))
    logits[np.arange(K_Y.size), np.searchsorted(K_CLASSES, K_Y)] += 2.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions(
        values=K_CLASSES[proba.argmax(axis=1)], probabilities=proba, classes=K_CLASSES
    )


def test_holdout_gate_fails_an_undefined_metric_with_its_reason() -> None:
    """An Undefined metric fails the holdout gate, and the reason is in the gate's reasons."""
    result = g.holdout_gate(
        {"roc_auc": Undefined(undefined="only one class (1) in the labels")},
        {"roc_auc": Bound(min=0.9)},
    )
    assert result.outcome is g.Outcome.FAILED
    assert "only one class (1)" in result.reasons[0]
    assert "null" not in result.model_dump_json()


@pytest.mark.parametrize(("noise", "outcome"), [(1.0, g.Outcome.PASSED), (4.0, g.Outcome.FAILED)])
def test_champion_bootstrap_works_for_three_string_classes(
    noise: float, outcome: g.Outcome
) -> None:
    """The paired bootstrap compares k-class models on OvR AUC, log loss and macro F1."""
    rules = {
        "roc_auc": ComparisonRule(max_regression=0.02),
        "log_loss": ComparisonRule(max_regression=0.05),
        "f1_macro": ComparisonRule(max_regression=0.03),
    }
    result = g.champion_gate(
        K_Y,
        _k_class_predictions(noise, 1),
        _k_class_predictions(1.0, 2),
        rules,
        champion_version="1",
        confidence=0.95,
        n_resamples=200,
        seed=0,
    )
    assert result.outcome is outcome, result.reasons
    assert all(len(result.metrics[f"{m}_gain_ci"]) == 2 for m in rules)


def test_reproducibility_compares_every_class_probability() -> None:
    """A change in any class's probability, not only the predicted label, is caught."""
    same = _k_class_predictions(1.0, 3)
    nudged_proba = same.probabilities.copy()
    nudged_proba[0, 2] += 1e-9
    nudged = Predictions(values=same.values, probabilities=nudged_proba, classes=K_CLASSES)
    prov = g.Provenance("c", "h", "d")
    assert g.reproducibility_gate(prov, prov, same, same, tolerance=0.0).outcome is g.Outcome.PASSED
    result = g.reproducibility_gate(prov, prov, same, nudged, tolerance=0.0)
    assert result.outcome is g.Outcome.FAILED
    assert result.metrics["differing_rows"] == 1
