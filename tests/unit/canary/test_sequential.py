"""The always-valid tests keep their error rate under repeated looks; A/A rollouts rarely roll back."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.simulation import Fault, Traffic, run_rollout, wilson_upper
from pipelines.canary.judge import Action
from pipelines.canary.sequential import (
    binomial_mixture_log_e,
    normal_mixture_log_e,
    p_value,
    share_under_ratio,
)
from pipelines.config.canary import CanaryConfig

pytestmark = pytest.mark.unit

ALPHA = 0.05


def _normal_crossings(drift: float, seed: int, paths: int = 2000, looks: int = 100) -> float:
    """Share of paths whose e-value ever reaches 1/alpha, looking after every observation."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(drift, 1.0, size=(paths, looks))
    sums = np.cumsum(steps, axis=1)
    n = np.arange(1, looks + 1)
    crossed = 0
    for path in sums:
        for k in range(looks):
            log_e = normal_mixture_log_e(path[k] / n[k], 1.0 / n[k], margin=0.0, spread=0.5)
            if log_e >= math.log(1 / ALPHA):
                crossed += 1
                break
    return crossed / paths


@pytest.mark.parametrize(("drift", "bound"), [(0.0, ALPHA), (-0.2, ALPHA / 2)])
def test_normal_mixture_controls_error_over_every_look(drift: float, bound: float) -> None:
    """Under the null (or better than it) checking after each of 100 observations stays ≤ alpha."""
    assert _normal_crossings(drift, seed=1) <= bound


def test_normal_mixture_detects_a_real_effect() -> None:
    """A harm of half a standard deviation per observation is found on nearly every path."""
    assert _normal_crossings(0.5, seed=2, paths=300) >= 0.95


def test_binomial_mixture_controls_error_over_every_look() -> None:
    """Bernoulli events at the null share, tested after each batch of 10, cross ≤ alpha."""
    rng = np.random.default_rng(3)
    paths, batches, p0 = 400, 40, 0.1
    crossed = 0
    for _ in range(paths):
        hits = np.cumsum(rng.binomial(10, p0, batches))
        for k in range(batches):
            log_e = binomial_mixture_log_e(
                np.array([hits[k]]), np.array([10 * (k + 1)]), np.array([p0]), spread=1.0
            )
            if log_e >= math.log(1 / ALPHA):
                crossed += 1
                break
    assert crossed / paths <= ALPHA


def test_primitives_edge_cases() -> None:
    """No data means no evidence (e = 1); p-values stay in [0, 1]; ratio 1 keeps the share."""
    assert binomial_mixture_log_e(np.array([0]), np.array([0]), np.array([0.5]), spread=1) == 0
    assert normal_mixture_log_e(1.0, 0.0, margin=0, spread=1) == 0.0
    assert normal_mixture_log_e(math.nan, 1.0, margin=0, spread=1) == 0.0
    assert p_value(-3.0) == 1.0
    assert 0 < p_value(10.0) < 1e-4
    assert share_under_ratio(np.array([0.1]), 1.0)[0] == pytest.approx(0.1)
    assert share_under_ratio(np.array([0.5]), 3.0)[0] == pytest.approx(0.75)


FAST = CanaryConfig.model_validate(
    {
        "steps": [
            {"weight": 10, "min_requests": 400, "min_duration_s": 120},
            {"weight": 50, "min_requests": 1200, "min_duration_s": 120},
        ],
        "quality": {"metrics": {"accuracy": {"max_regression": 0.01}}},
    }
)


def test_aa_rollouts_rarely_roll_back() -> None:
    """200 A/A rollouts (same model on both sides, fixed seed) roll back at most 2 % of the time."""
    traffic = Traffic(rps=40.0, check_interval_s=60.0)
    outcomes = [run_rollout(FAST, Fault.NONE, seed, traffic) for seed in range(200)]
    rollbacks = sum(o.judge.action is Action.ROLLBACK for o in outcomes)
    assert all(o.judge.action is not Action.HOLD for o in outcomes)
    assert rollbacks / len(outcomes) <= 0.02
    assert wilson_upper(0, 200) < 0.02
