"""Input drift from binned counts: the canary's live inputs against its training reference.

Where the judge reads the servers' Prometheus series (issue 15), it has no input rows, only
each version's rows per feature and bin (:data:`pipelines.telemetry.INPUT_BINS`, on the bins
``mlops package`` placed on the training reference) and the reference's own rows per bin
(:data:`pipelines.telemetry.INPUT_REFERENCE`). Per feature, a chi-square goodness-of-fit test
compares the window's counts with the reference's proportions; a feature has drifted at
``p < input_drift.drift_threshold``, and the signal is the drifted share, judged against
``input_drift.max_drifted_share`` as the Evidently path's (:mod:`pipelines.datachecks`).

The canary's counts are tested against the canary's own reference, not against stable's
counts: the question is the local loop's (do live inputs still look like the data the model
was validated on?), stable sees the same stream so it cannot tell drift apart, and two
versions trained on different data have different bins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Added to every reference bin: a bin the reference never filled (often ``missing`` or
# ``other``) expects a little, so one live value there is evidence, not an infinite statistic.
PSEUDO_ROWS = 0.5

FeatureCounts = Mapping[str, Mapping[str, float]]  # feature -> bin -> rows


@dataclass(frozen=True)
class BinnedInputs:
    """One version's input rows per feature and bin over a window, with its reference's.

    Attributes:
        counts: Live rows per feature and bin in the window.
        reference: The training reference's rows per feature and bin (fixed per version).
    """

    counts: FeatureCounts
    reference: FeatureCounts

    @property
    def rows(self) -> int:
        """Rows in the window (every row is counted once in each feature)."""
        return round(max((sum(c.values()) for c in self.counts.values()), default=0.0))

    @staticmethod
    def merge(parts: Sequence[BinnedInputs]) -> BinnedInputs | None:
        """The counts of several disjoint windows summed (the reference of the last)."""
        if not parts:
            return None
        summed: dict[str, dict[str, float]] = {}
        for part in parts:
            for feature, bins in part.counts.items():
                target = summed.setdefault(feature, {})
                for label, rows in bins.items():
                    target[label] = target.get(label, 0.0) + rows
        return BinnedInputs(counts=summed, reference=parts[-1].reference)


def chi_square_p_value(observed: Sequence[float], reference: Sequence[float]) -> float:
    """The chi-square goodness-of-fit p-value of ``observed`` against ``reference``'s shares.

    Args:
        observed: Live rows per bin.
        reference: Reference rows per bin (the same bins), smoothed by :data:`PSEUDO_ROWS`.

    A single bin, or no live row, gives 1 (nothing to compare).
    """
    counts = np.asarray(observed, float)
    total = counts.sum()
    if len(counts) < 2 or total <= 0:
        return 1.0
    shares = np.asarray(reference, float) + PSEUDO_ROWS
    expected = total * shares / shares.sum()
    statistic = float(np.sum((counts - expected) ** 2 / expected))
    return float(stats.chi2.sf(statistic, len(counts) - 1))


def p_values(inputs: BinnedInputs) -> dict[str, float]:
    """Per feature with a reference, the p-value of its window's counts on the reference's bins.

    A live bin the reference lacks cannot occur: the server counts on the reference's bins.
    """
    out = {}
    for feature, reference in inputs.reference.items():
        labels = sorted(reference)
        live = inputs.counts.get(feature, {})
        out[feature] = chi_square_p_value(
            [live.get(label, 0.0) for label in labels], [reference[label] for label in labels]
        )
    return out


def drifted_features(inputs: BinnedInputs, threshold: float) -> tuple[float, list[str]]:
    """The drifted share of features and their names (``p < threshold``)."""
    found = p_values(inputs)
    drifted = sorted(feature for feature, p in found.items() if p < threshold)
    return (len(drifted) / len(found) if found else 0.0), drifted
