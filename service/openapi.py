"""The OpenAPI document (``/openapi.json``, shown at ``/docs``), true to this deployment.

FastAPI cannot see what we do by hand or decide at start, so `_build` adds it:

- the ``POST /generate`` body (read by a dependency with a size cap, then parsed strictly),
  as what the served generators and the deployment's limits accept
  (`service.request_schema`);
- the problem+json bodies of every error response;
- authentication as configured: bearer auth and its ``401`` only when API keys are set;
- the ``Idempotency-Key`` header's allowed form.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from service.idempotency import KEY_PATTERN
from service.problems import PROBLEM_CONTENT_TYPE
from service.request_schema import generate_body_schema
from service.schemas import GenerateRequest, Problem
from service.state import Gateway

__all__ = ["install_openapi"]

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for ops in schema.get("paths", {}).values() for op in ops.values()]


def _declare_auth(schema: dict[str, Any], *, keys_enabled: bool) -> None:
    """Bearer auth (and its 401) where keys are required; nowhere when keys are off."""
    if not keys_enabled:
        schema.get("components", {}).pop("securitySchemes", None)
        for operation in _operations(schema):
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)
        return
    for operation in _operations(schema):
        if operation.get("security"):
            response = operation.setdefault("responses", {}).setdefault(
                "401", {"description": "API key missing or invalid"}
            )
            response["headers"] = {
                "WWW-Authenticate": {
                    "schema": {"type": "string"},
                    "description": 'Bearer realm="rpg"',
                }
            }


def _describe_idempotency_key(schema: dict[str, Any]) -> None:
    for operation in _operations(schema):
        for parameter in operation.get("parameters", []):
            if parameter.get("in") == "header" and parameter.get("name") == "Idempotency-Key":
                target = parameter.setdefault("schema", {})
                if "anyOf" in target:  # Optional[str]: a header is a string when present
                    target.clear()
                target.update(type="string", pattern=f"^{KEY_PATTERN}$")


def _problem_bodies(schema: dict[str, Any]) -> None:
    for operation in _operations(schema):
        for code, response in operation.get("responses", {}).items():
            if code.isdigit() and int(code) >= 400:
                response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": _PROBLEM_REF}}


def _build(app: FastAPI) -> dict[str, Any]:
    gateway: Gateway = app.state.gateway
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    _, defs = models_json_schema(
        [(GenerateRequest, "validation"), (Problem, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs.get("$defs", {}))
    schemas["GenerateRequest"] = generate_body_schema(
        schemas["GenerateRequest"], gateway.catalog, gateway.settings
    )
    _declare_auth(schema, keys_enabled=gateway.keyring.enabled)
    _describe_idempotency_key(schema)
    _problem_bodies(schema)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the completed document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
