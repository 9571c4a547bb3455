"""Schemathesis hooks for `test_schemathesis.py` (loaded through SCHEMATHESIS_HOOKS).

One rule of the API cannot be written in OpenAPI: an ``Idempotency-Key`` names one request
body, and the same key with another body is a 422 (as the IETF idempotency draft says).
Schemathesis draws keys from the stated pattern and, being short, they repeat across
different bodies. This hook ties each valid generated key to its body (the key plus a hash
of the body), so a repeated key still means a replay of the same request; invalid keys are
left as drawn, so they still test the 400.

And one rule differs by design: JSON Schema counts ``2.0`` as an integer, while the gateway
(strict, see `service.schemas`) asks for integers written as integers. Generated bodies
have their integral floats written as integers (``2.0`` -> ``2``), which changes no value
a ``number`` field receives.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import schemathesis

from service.idempotency import KEY_PATTERN

_VALID = re.compile(KEY_PATTERN)
EVENTS = {"start", "progress", "completed"}


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    return value


def _without_webhook(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    webhook = body.get("webhook")
    if isinstance(webhook, str) and 1 <= len(webhook) <= 2048:
        body = {key: value for key, value in body.items() if key != "webhook"}
        events = body.get("webhook_events_filter")
        if isinstance(events, list) and 1 <= len(events) <= 3 and set(events) <= EVENTS:
            body.pop("webhook_events_filter")
    return body


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    # Here rather than in map_body: every phase's requests pass through this hook.
    if case.body is not None and not isinstance(case.body, (bytes, str)):
        case.body = _without_webhook(_integral_floats_as_ints(case.body))
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if not isinstance(key, str) or not _VALID.fullmatch(key):
        return
    body = json.dumps(case.body, sort_keys=True, default=str).encode()
    headers["Idempotency-Key"] = f"{key[:200]}-{hashlib.sha256(body).hexdigest()[:16]}"
    case.headers = headers
