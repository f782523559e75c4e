"""The training reference's input bins: placed at package time, validated in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from pipelines import telemetry
from pipelines.canary.summary import value_edges
from pipelines.config.serve import ServeConfig
from pipelines.serving.input_bins import InputBinner, feature_positions, reference_bins
from pipelines.serving.manifest import (
    FeatureBins,
    FeatureSpec,
    ManifestError,
    ReferenceBins,
    ServingManifest,
)

pytestmark = pytest.mark.unit

FEATURES = [
    FeatureSpec(name="x", type="double", nullable=True),
    FeatureSpec(name="n", type="long"),
    FeatureSpec(name="colour", type="string", nullable=True),
]


def _reference() -> dict[str, list]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000).tolist()
    x[:10] = [None] * 10
    colours = ["red"] * 500 + ["blue"] * 300 + ["green"] * 150 + [f"c{k}" for k in range(49)]
    return {"x": x, "n": [k % 3 for k in range(1000)], "colour": [*colours, None]}


def test_numeric_features_get_at_most_ten_quantile_bins_and_missing() -> None:
    """It places ten equal-count bins on a continuous feature and counts its missing values."""
    x, n, _ = reference_bins(_reference(), FEATURES)
    assert x.edges is not None and len(x.edges) == telemetry.MAX_FEATURE_BINS - 1
    assert x.reference["missing"] == 10
    assert sum(x.reference.values()) == 1000
    assert all(95 <= x.reference[str(k)] <= 105 for k in range(10))
    # Three distinct values: equal quantiles merge; below the lowest value stays a bin.
    assert n.edges == [0.0, 1.0, 2.0]
    assert n.reference == {"0": 0, "1": 334, "2": 333, "3": 333, "missing": 0}


def test_categorical_features_keep_the_most_frequent_categories() -> None:
    """It keeps the reference's most frequent categories first and folds the rest into other."""
    bins = reference_bins(_reference(), FEATURES, max_categories=3)[2]
    assert bins.categories == ["red", "blue", "green"]
    assert bins.reference == {"red": 500, "blue": 300, "green": 150, "other": 49, "missing": 1}


def test_a_value_lands_in_the_same_bin_live_as_in_the_reference() -> None:
    """It bins live values with the reference's convention: [e_k-1, e_k), None as missing."""
    edges = [0.0, 1.0]
    positions = feature_positions(edges, None, [-5.0, 0.0, 0.5, 1.0, 7.0, None, float("nan")])
    assert positions.tolist() == [0, 1, 1, 2, 2, 3, 3]
    found = feature_positions(None, ["a", "b"], ["b", "zzz", None, "a"])
    assert found.tolist() == [1, 2, 3, 0]


def test_the_binner_counts_rows_into_every_features_slots() -> None:
    """It counts a request's rows per (feature, bin) slot, unseen categories as other."""
    x, n, colour = reference_bins(_reference(), FEATURES, max_categories=2)
    binner = InputBinner(["x", "n", "colour"], [x, n, colour])
    rows = [[None, 0, "red"], [100.0, 2, "purple"], [-100.0, 1, None]]
    counts = dict(zip(binner.slots, binner.count(rows).tolist(), strict=True))
    assert counts[("x", "missing")] == 1
    assert counts[("x", "9")] == 1 and counts[("x", "0")] == 1
    assert counts[("n", "1")] == counts[("n", "2")] == counts[("n", "3")] == 1
    assert counts[("colour", "red")] == 1
    assert counts[("colour", "other")] == 1 and counts[("colour", "missing")] == 1
    assert sum(counts.values()) == 3 * 3


def test_the_value_edges_are_the_rollouts() -> None:
    """It places input edges with the one quantile placement the rollout's value bins use."""
    values = np.random.default_rng(1).exponential(size=500)
    (x,) = reference_bins({"x": values}, FEATURES[:1])
    assert x.edges == value_edges(values, telemetry.MAX_FEATURE_BINS)


@pytest.mark.parametrize(
    ("bins", "message"),
    [
        ({"name": "x", "edges": [1.0, 0.0], "reference": {}}, "strictly increasing"),
        ({"name": "x", "edges": [0.0], "categories": ["a"], "reference": {}}, "exactly one"),
        ({"name": "c", "categories": ["other"], "reference": {}}, "not 'missing' or 'other'"),
        ({"name": "x", "edges": [0.0], "reference": {"0": 1}}, "must count every bin"),
    ],
)
def test_malformed_bins_are_refused(bins: dict, message: str) -> None:
    """It refuses bins with unordered edges, two kinds, reserved names or missing counts."""
    with pytest.raises(ValidationError, match=message):
        FeatureBins.model_validate(bins)


def test_a_reference_of_a_regressor_needs_increasing_value_edges() -> None:
    """It refuses value edges that do not increase."""
    with pytest.raises(ValidationError, match="value_edges"):
        ReferenceBins(rows=10, features=[], value_edges=[2.0, 1.0])


def test_the_binners_matrix_pass_agrees_with_one_feature_at_a_time() -> None:
    """It bins numeric features of different edge counts as feature_positions does, inf too."""
    rng = np.random.default_rng(2)
    features = [FeatureSpec(name=f"f{k}", type="double", nullable=True) for k in range(4)]
    columns = {f.name: rng.normal(size=300).round(k) for k, f in enumerate(features)}
    placed = reference_bins(columns, features)
    assert len({len(f.edges or []) for f in placed}) > 1  # edges of different lengths
    rows = rng.normal(size=(50, 4)).round(1).tolist()
    rows[0][1], rows[1][2], rows[2][3] = None, float("inf"), float("-inf")
    counts = InputBinner([f.name for f in features], placed).count(rows)
    expected = np.concatenate(
        [
            np.bincount(
                feature_positions(f.edges, None, [r[k] for r in rows]), minlength=len(f.labels)
            )
            for k, f in enumerate(placed)
        ]
    )
    assert counts.tolist() == expected.tolist()


def _manifest_fields(task: str = "classification") -> dict:
    return {
        "model_name": "m",
        "model_version": "3",
        "task": task,
        "bentoml_model_tag": "m:v3-abc",
        "artifact_sha256": "0" * 64,
        "model_file": "model.skops",
        "serialization_format": "skops",
        "features": [{"name": "x", "type": "double"}],
        "serve": ServeConfig().model_dump(mode="json"),
    }


def test_a_manifest_written_before_the_bins_still_loads(tmp_path) -> None:
    """It reads a manifest without reference_bins (packaged before issue 15): no bins."""
    path = tmp_path / "serving_manifest.json"
    path.write_text(json.dumps(_manifest_fields()))
    assert ServingManifest.read(path).reference_bins is None


@pytest.mark.parametrize(
    ("task", "bins", "message"),
    [
        ("classification", {"rows": 1, "features": [], "value_edges": [1.0]}, "only a regressor"),
        (
            "regression",
            {
                "rows": 1,
                "features": [{"name": "y", "edges": [], "reference": {"0": 1, "missing": 0}}],
            },
            "not distinct input features",
        ),
    ],
)
def test_a_manifest_refuses_bins_that_do_not_fit_its_model(task, bins, message, tmp_path) -> None:
    """It refuses value edges for a classifier and bins of a feature the model does not take."""
    path = tmp_path / "serving_manifest.json"
    path.write_text(json.dumps({**_manifest_fields(task), "reference_bins": bins}))
    with pytest.raises(ManifestError, match=message):
        ServingManifest.read(path)


def test_a_value_that_is_not_a_number_counts_as_missing() -> None:
    """It counts a non-number in a numeric feature as missing rather than failing the request."""
    (x,) = reference_bins({"x": [0.0, 1.0, 2.0]}, FEATURES[:1])
    binner = InputBinner(["x"], [x])
    counts = dict(zip(binner.slots, binner.count([["high"], [True], [1.5]]).tolist(), strict=True))
    assert counts[("x", "missing")] == 2
