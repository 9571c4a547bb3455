"""The gateway's OpenAPI document as Markdown: one section per operation, one per schema.

Reads only the document (paths, parameters, bodies, responses, component schemas), so the
page says what `/openapi.json` says and nothing else.
"""

from __future__ import annotations

from typing import Any

METHODS = ("get", "post", "put", "patch", "delete")
SCHEMA_PREFIX = "#/components/schemas/"


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _anchor(name: str) -> str:
    return f"schema-{name.lower()}"


def type_of(schema: dict[str, Any]) -> str:
    """A short, readable type for a JSON schema (links for component references)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(SCHEMA_PREFIX)
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        kinds = [type_of(option) for option in options]
        return " or ".join(dict.fromkeys(kinds))
    if "enum" in schema:
        return " \\| ".join(f"`{value}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type")
    if kind == "array":
        return f"list of {type_of(schema.get('items') or {})}"
    if kind == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        if isinstance(extra, dict) and extra:
            return f"object of {type_of(extra)}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return str(kind or "any")


def _limits(schema: dict[str, Any]) -> str:
    words = []
    for key, text in (
        ("minimum", ">= {}"),
        ("maximum", "<= {}"),
        ("exclusiveMinimum", "> {}"),
        ("minLength", "at least {} characters"),
        ("maxLength", "at most {} characters"),
        ("minItems", "at least {} items"),
        ("maxItems", "at most {} items"),
        ("pattern", "matches `{}`"),
    ):
        if key in schema:
            words.append(text.format(schema[key]))
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            words.extend(w for w in _limits(option).split("; ") if w)
    return "; ".join(dict.fromkeys(words))


def _properties_table(schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties") or {}
    if not properties:
        return []
    required = set(schema.get("required") or [])
    lines = ["| field | type | required | default | meaning |", "|---|---|---|---|---|"]
    for name, prop in properties.items():
        default = f"`{prop['default']}`" if "default" in prop else ""
        meaning = "; ".join(part for part in (prop.get("description", ""), _limits(prop)) if part)
        lines.append(
            f"| `{name}` | {type_of(prop)} | {'yes' if name in required else ''} "
            f"| {_cell(default)} | {_cell(meaning)} |"
        )
    return lines


def _operation(path: str, method: str, op: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    summary = op.get("summary")
    if summary:
        lines += [f"**{summary}.**", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    parameters = op.get("parameters") or []
    if parameters:
        lines += ["| parameter | in | type | required | meaning |", "|---|---|---|---|---|"]
        for param in parameters:
            schema = param.get("schema") or {}
            meaning = "; ".join(
                part for part in (param.get("description", ""), _limits(schema)) if part
            )
            lines.append(
                f"| `{param['name']}` | {param['in']} | {type_of(schema)} "
                f"| {'yes' if param.get('required') else ''} | {_cell(meaning)} |"
            )
        lines.append("")
    body = (op.get("requestBody") or {}).get("content") or {}
    for media_type, content in body.items():
        lines += [f"Request body (`{media_type}`): {type_of(content.get('schema') or {})}", ""]
    responses = op.get("responses") or {}
    if responses:
        lines += ["| status | meaning | body |", "|---|---|---|"]
        for code, response in responses.items():
            kinds = [
                f"`{media}` {type_of(content.get('schema') or {})}".strip()
                for media, content in (response.get("content") or {}).items()
            ]
            lines.append(
                f"| `{code}` | {_cell(response.get('description', ''))} | {'; '.join(kinds)} |"
            )
        lines.append("")
    return lines


def render(document: dict[str, Any]) -> str:
    """Markdown for every operation and component schema of ``document``."""
    info = document.get("info") or {}
    lines = [
        f"OpenAPI {document.get('openapi', '')}, {info.get('title', '')} "
        f"version {info.get('version', '')}.",
        "",
    ]
    if info.get("description"):
        lines += [info["description"].strip(), ""]
    lines += ["## Operations", ""]
    for path, operations in (document.get("paths") or {}).items():
        for method in METHODS:
            if method in operations:
                lines += _operation(path, method, operations[method])
    lines += ["## Schemas", ""]
    schemas = (document.get("components") or {}).get("schemas") or {}
    for name in sorted(schemas):
        schema = schemas[name]
        lines += [f"### {name} {{#{_anchor(name)}}}", ""]
        if schema.get("description"):
            lines += [_cell(schema["description"]), ""]
        table = _properties_table(schema)
        lines += [*table, ""] if table else [f"Type: {type_of(schema)}", ""]
    return "\n".join(lines)
