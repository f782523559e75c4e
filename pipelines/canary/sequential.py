"""Always-valid sequential tests: mixture likelihood ratios (mSPRT) and their e-values.

Each function returns the logarithm of an e-value ``E``: a mixture likelihood ratio of the data
seen so far that is a nonnegative (super)martingale while the null hypothesis holds. By Ville's
inequality ``P(E ever reaches 1/alpha) <= alpha``, so the judge may compute it after every
window, as often as it likes, and reject the first time ``E >= 1/alpha`` without inflating the
false-rollback rate. ``min(1, 1/E)`` is an always-valid p-value.

Two families cover every signal of the canary analysis:

* :func:`normal_mixture_log_e` for an asymptotically normal estimate (a difference of mean
  log-latencies, of a quality metric) against a non-inferiority margin; closed form.
* :func:`binomial_mixture_log_e` for counts: each event (an error, a prediction in a bin, a
  disagreement) is a Bernoulli trial whose success probability under the null is known
  per stratum; the alternative is a prior over log-odds shifts on a grid.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit, log_ndtr, logit, logsumexp

_GRID_POINTS = 48


def normal_mixture_log_e(
    estimate: float, variance: float, *, margin: float, spread: float
) -> float:
    """Log e-value for ``H0: theta <= margin`` against ``theta > margin`` (one-sided).

    The estimate is taken as ``N(theta, variance)``; the alternative mixes ``theta - margin``
    over a half-normal prior with scale ``spread`` (Johari et al., "Always valid inference",
    with a one-sided prior). In closed form, with ``d = estimate - margin``, ``V = variance``,
    ``t = spread**2``::

        E = 2 * Phi(d * sqrt(t) / sqrt(V (V + t))) * sqrt(V / (V + t))
              * exp(d**2 t / (2 V (V + t)))

    Any ``theta < margin`` only makes ``E`` smaller, so the composite null is covered.

    Args:
        estimate: Point estimate of the harm (positive means the canary is worse).
        variance: Its variance; must be positive.
        margin: The tolerated harm.
        spread: Scale of the half-normal prior on the excess harm.
    """
    if not (math.isfinite(estimate) and math.isfinite(variance)) or variance <= 0:
        return 0.0
    d, v, t = estimate - margin, variance, spread * spread
    z = d * math.sqrt(t) / math.sqrt(v * (v + t))
    return float(
        math.log(2.0) + log_ndtr(z) + 0.5 * math.log(v / (v + t)) + d * d * t / (2 * v * (v + t))
    )


def _shift_grid(spread: float, two_sided: bool) -> tuple[np.ndarray, np.ndarray]:
    """Log-odds shifts and their prior log-weights (half-normal, or normal when two-sided)."""
    half = np.linspace(spread / 16, 4 * spread, _GRID_POINTS)
    shifts = np.concatenate([-half[::-1], half]) if two_sided else half
    log_w = -0.5 * (shifts / spread) ** 2
    return shifts, log_w - logsumexp(log_w)


def binomial_mixture_log_e(
    successes: np.ndarray,
    trials: np.ndarray,
    null_p: np.ndarray,
    *,
    spread: float,
    two_sided: bool = False,
) -> float:
    """Log e-value that the success probability exceeds ``null_p`` (or differs, two-sided).

    Strata (e.g. rollout steps with different traffic shares) each have their own null
    probability; the alternative shifts every stratum's log-odds by the same amount ``u``,
    mixed over a grid prior. One-sided, ``u > 0`` only, which keeps ``E`` a supermartingale for
    every probability at or below the null.

    Args:
        successes: Successes per stratum.
        trials: Trials per stratum.
        null_p: Success probability per stratum under the null, strictly inside (0, 1).
        spread: Prior scale of the log-odds shift.
        two_sided: Also mix over negative shifts (the null is then a point).
    """
    x = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    p0 = np.clip(np.asarray(null_p, dtype=float), 1e-12, 1 - 1e-12)
    keep = n > 0
    if not keep.any():
        return 0.0
    x, n, p0 = x[keep], n[keep], p0[keep]
    shifts, log_w = _shift_grid(spread, two_sided)
    p1 = expit(logit(p0)[:, None] + shifts[None, :])  # strata x grid
    log_lr = (
        x[:, None] * (np.log(p1) - np.log(p0)[:, None])
        + (n - x)[:, None] * (np.log1p(-p1) - np.log1p(-p0)[:, None])
    ).sum(axis=0)
    return float(logsumexp(log_lr + log_w))


def share_under_ratio(share: np.ndarray, ratio: float) -> np.ndarray:
    """Probability that an event comes from the canary when its rate is ``ratio`` × stable's.

    With a fraction ``share`` of requests on the canary and independent per-request rates,
    an event is the canary's with probability ``share*ratio / (share*ratio + 1 - share)``.
    """
    share = np.asarray(share, dtype=float)
    return share * ratio / (share * ratio + 1.0 - share)


def p_value(log_e: float) -> float:
    """Always-valid p-value bound at this look, ``min(1, 1/E)``."""
    return float(min(1.0, math.exp(-log_e))) if log_e > 0 else 1.0
