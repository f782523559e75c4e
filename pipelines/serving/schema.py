"""Request and response models generated from a model's MLflow signature.

One definition serves every model of ``models/``: the row model has one required field per
signature column, typed strictly (no string-to-number coercion), finite floats only, and
unknown fields forbidden. Validation runs in pydantic-core straight from the JSON bytes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, create_model

from pipelines.serving.manifest import FeatureSpec, ServingManifest


def _encodable(value: str) -> str:
    """Reject lone surrogates: JSON allows them, UTF-8 (and so the log) cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("string is not valid Unicode (lone surrogate)") from None
    return value


FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# (Inclusive bounds only: BentoML's spec is OpenAPI 3.0, whose exclusiveMaximum is a flag.)
# JSON integers are unbounded; numpy and the JSON-lines log are not. 2**53 is the range every
# JSON implementation (and float64) represents exactly.
Int53 = Annotated[int, Field(strict=True, ge=-(2**53), le=2**53)]
LabelInt = Annotated[int, Field(strict=True, ge=-(2**31), le=2**31 - 1)]
Text = Annotated[str, Field(strict=True, max_length=10_000), AfterValidator(_encodable)]

_TYPES: dict[str, Any] = {
    "double": FiniteFloat,
    "float": FiniteFloat,
    "long": Int53,
    "integer": Int53,
    "boolean": StrictBool,
    "string": Text,
}
REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _field_type(feature: FeatureSpec) -> Any:
    """The strict type of one column: known categories only (unless counted), null if allowed."""
    kind: Any = _TYPES[feature.type]
    if feature.categories is not None and feature.unknown == "refuse":
        # A 422 whose message lists the allowed values, with the field in its location.
        kind = Literal[tuple(feature.categories)]  # type: ignore[misc]
    return kind | None if feature.nullable else kind


def row_model(features: list[FeatureSpec]) -> type[BaseModel]:
    """A pydantic model for one input row: every signature column, strictly typed.

    Every column must be present; a nullable one may be JSON null.
    """
    fields: dict[str, Any] = {f.name: (_field_type(f), Field(...)) for f in features}
    return create_model("Record", __base__=_Strict, **fields)


def request_model(manifest: ServingManifest) -> type[BaseModel]:
    """The body of ``POST /predict``: ``{"records": [row, ...]}`` with 1..max rows."""
    record = row_model(manifest.features)
    max_rows = manifest.serve.api.max_records_per_request
    return create_model(
        "PredictRequest",
        __base__=_Strict,
        __doc__=f"One or more rows (at most {max_rows}) for {manifest.model_name}.",
        records=(list[record], Field(min_length=1, max_length=max_rows)),  # type: ignore[valid-type]
    )


class PredictResponse(BaseModel):
    """Predictions in request order, with the exact model version that made them."""

    model_config = ConfigDict(protected_namespaces=())

    request_id: str = Field(description="Quote it when posting the ground-truth label.")
    model_name: str
    model_version: str
    predictions: list[Any]
    classes: list[Any] | None = Field(
        default=None, description="Classifiers: the order of the probability columns."
    )
    probabilities: list[list[float]] | None = Field(
        default=None, description="Classifiers: one probability per class, per row."
    )


def label_model(manifest: ServingManifest) -> type[BaseModel]:
    """The body of ``POST /labels``: ground truth for earlier predictions, by request id."""
    label_type: Any = LabelInt | StrictBool | Annotated[Text, Field(max_length=256)]
    if manifest.task == "regression":
        label_type = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    item = create_model(
        "Label",
        __base__=_Strict,
        request_id=(str, Field(pattern=REQUEST_ID_PATTERN)),
        row=(
            int,
            Field(default=0, ge=0, le=manifest.serve.api.max_records_per_request - 1, strict=True),
        ),
        label=(label_type, Field(...)),
    )
    return create_model(
        "LabelsRequest",
        __base__=_Strict,
        labels=(
            list[item],  # type: ignore[valid-type]
            Field(min_length=1, max_length=manifest.serve.labels.max_labels_per_request),
        ),
    )


class LabelsResponse(BaseModel):
    """How many labels were appended."""

    recorded: int
