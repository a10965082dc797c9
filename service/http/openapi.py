"""The published OpenAPI document: FastAPI's, made to say what the service really sends.

- The ``Problem`` schema (``application/problem+json``, declared by routes.common) is added to the
  components.
- FastAPI declares a 422 ``HTTPValidationError`` on every route with a parameter. A route whose only
  parameters are free-form path strings (a job id) cannot fail validation: its 422 is removed. Where a
  caller can send something invalid (a query parameter, a body), the 422 becomes problem details, which
  is what the validation handler sends.
- Security follows the deployment: without API keys (open mode) the bearer key is optional
  everywhere; /metrics needs it only with ``metrics_require_key``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.http.routes.common import EXAMPLE_ID, INVALID_QUERY, JOB_EXAMPLES
from service.http.schemas import Problem
from service.settings import Settings

_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace ``app.openapi`` with the corrected document (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                servers=app.servers,
            )
            app.openapi_schema = correct(restore_examples(spec), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def restore_examples(node: Any) -> Any:
    """The job examples of routes.common as declared: FastAPI drops null values from the whole
    document, which would leave an example job without its required nullable fields."""
    if isinstance(node, dict):
        if node.get("id") == EXAMPLE_ID and node.get("status") in JOB_EXAMPLES:
            return JOB_EXAMPLES[node["status"]]
        return {key: restore_examples(value) for key, value in node.items()}
    if isinstance(node, list):
        return [restore_examples(value) for value in node]
    return node


def correct(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem_schema.pop("$defs", {}))
    schemas["Problem"] = problem_schema
    for path, path_item in spec.get("paths", {}).items():
        for operation in path_item.values():
            # /readyz answers without a key (the key only adds the details).
            keyless = (
                not settings.api_keys
                or path == "/readyz"
                or (path == "/metrics" and not settings.metrics_require_key)
            )
            if keyless and operation.get("security") and {} not in operation["security"]:
                operation["security"] = [*operation["security"], {}]
            responses = operation.get("responses", {})
            generic = responses.get("422", {}).get("content", {}).get("application/json", {})
            if generic.get("schema", {}).get("$ref") != _FASTAPI_422:
                continue
            if _can_fail_validation(operation):
                responses["422"] = INVALID_QUERY[422]
            else:
                del responses["422"]
    if not _references(spec["paths"], _FASTAPI_422):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return spec


def _can_fail_validation(operation: dict[str, Any]) -> bool:
    """A body, or any parameter other than a free-form path string, can be sent invalid."""
    if "requestBody" in operation:
        return True
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        free_string = schema.get("type") == "string" and not set(schema) & {"pattern", "maxLength", "enum"}
        if parameter.get("in") != "path" or not free_string:
            return True
    return False


def _references(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_references(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_references(v, ref) for v in node)
    return False
