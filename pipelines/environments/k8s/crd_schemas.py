"""The custom resources' schemas, vendored from each project's released CRD manifests.

``schemas/crds/<project>/`` holds the ``openAPIV3Schema`` of every custom resource the
renderer writes (Argo Rollouts, the Gateway API standard channel, the Prometheus Operator,
Argo CD's Application),
each folder with a ``SOURCE`` file (repository, tag, commit, path) and the project's licence.
Core objects are checked with ``kubernetes-validate`` instead.

A CRD schema lets the API server *prune* unknown fields silently; ``kubectl apply`` with
field validation ``Strict`` (its default) rejects them. :func:`validate` does the same: an
object schema with ``properties`` and no ``x-kubernetes-preserve-unknown-fields`` gets
``additionalProperties: false``, so a misspelt field is an error here too. CEL rules
(``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS_DIR = Path(__file__).resolve().parents[3] / "schemas" / "crds"

# (apiVersion, kind) -> the vendored file, relative to SCHEMAS_DIR.
SCHEMA_FILES = {
    ("argoproj.io/v1alpha1", "Rollout"): "argo-rollouts/rollout-argoproj.io-v1alpha1.json",
    (
        "argoproj.io/v1alpha1",
        "AnalysisTemplate",
    ): "argo-rollouts/analysistemplate-argoproj.io-v1alpha1.json",
    ("argoproj.io/v1alpha1", "Application"): "argo-cd/application-argoproj.io-v1alpha1.json",
    (
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
    ): "gateway-api/httproute-gateway.networking.k8s.io-v1.json",
    (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
    ): "prometheus-operator/servicemonitor-monitoring.coreos.com-v1.json",
}


class UnknownKind(KeyError):
    """No vendored schema for this apiVersion and kind."""


def _strict(schema: Any) -> Any:
    """The schema with unknown fields forbidden wherever the API server would prune them."""
    if isinstance(schema, dict):
        strict = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in strict
            and "additionalProperties" not in strict
            and not strict.get("x-kubernetes-preserve-unknown-fields")
        ):
            strict["additionalProperties"] = False
        return strict
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    try:
        relative = SCHEMA_FILES[(api_version, kind)]
    except KeyError:
        raise UnknownKind(f"no vendored CRD schema for {api_version} {kind}") from None
    schema = _strict(json.loads((SCHEMAS_DIR / relative).read_text()))
    validator_class = jsonschema.validators.validator_for(schema, jsonschema.Draft4Validator)
    return validator_class(schema)


def has_schema(document: dict[str, Any]) -> bool:
    """Whether a vendored CRD schema covers this object."""
    return (document.get("apiVersion"), document.get("kind")) in SCHEMA_FILES


def errors(document: dict[str, Any]) -> list[str]:
    """Every violation of the object's CRD schema, as ``path: message`` (empty: valid).

    Raises:
        UnknownKind: No schema is vendored for the object's apiVersion and kind.
    """
    validator = _validator(str(document.get("apiVersion")), str(document.get("kind")))
    found = sorted(validator.iter_errors(copy.deepcopy(document)), key=lambda e: list(e.path))
    return [f"{'.'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in found]
