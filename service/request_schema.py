"""The ``POST /generate`` body schema as this deployment really accepts it (OpenAPI).

`GenerateRequest`'s own schema cannot know the served generators or the deployment's
limits, so a request valid by it could still get a 422. `generate_body_schema` writes one
variant per (generator, sampler family), each stating exactly what that generator takes:
its name, whether a task (embedding or positive classes) is required and its size, the
steps and samples allowed, and that ``eta`` is 0 with DDPM. A body valid by the document is
accepted; one invalid by it is refused (what schemathesis checks).
"""

from __future__ import annotations

import copy
from typing import Any

from models.request_check import objective
from models.sampler_names import samplers_for
from service.catalog import Catalog, GeneratorInfo
from worker.settings import Settings

__all__ = ["generate_body_schema"]

_NULL = {"type": "null"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _NULL]}


def _task_spec(info: GeneratorInfo) -> dict[str, Any]:
    labels = info.labels
    # An entry names a class by its label, or by the label's digits as a JSON integer.
    names: list[Any] = [*labels, *[int(label) for label in labels if label.isdecimal()]]
    every_class = [
        {"contains": {"enum": [label, *([int(label)] if label.isdecimal() else [])]}}
        for label in labels
    ]
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["positive_classes"],
        "properties": {
            "positive_classes": {
                "type": "array",
                "items": {"enum": names},
                "minItems": 1,
                "maxItems": 4096,
                "not": {"allOf": every_class},  # a binary task needs a negative class
                "description": f"labels (or indices) of the positive classes, from {labels}; "
                "not all of them",
            }
        },
    }


def _condition_variants(info: GeneratorInfo) -> list[dict[str, Any]]:
    """(properties, required) fragments for the task fields of `info`."""
    if not info.is_conditional:
        return [{"properties": {"task_embedding": _NULL, "task": _NULL}, "required": []}]
    dim = info.condition_dim
    embedding: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
    if dim is not None:
        embedding.update(minItems=dim, maxItems=dim)
    else:
        embedding["maxItems"] = 65536
    variants = [
        {
            "properties": {"task_embedding": embedding, "task": _NULL},
            "required": ["task_embedding"],
        }
    ]
    if info.labels:
        variants.append(
            {
                "properties": {"task_embedding": _NULL, "task": _task_spec(info)},
                "required": ["task"],
            }
        )
    return variants


def _sampler_variants(info: GeneratorInfo, settings: Settings) -> list[dict[str, Any]]:
    """(properties, required) fragments for sampler, steps and eta (models.request_check's
    rules: DDPM runs the whole schedule with eta 0; the others take 1..limit steps)."""
    steps_limit = min(settings.max_steps, info.num_timesteps)
    # only the samplers of the generator's objective (a flow generator cannot run DDIM)
    stepped = [name for name in samplers_for(objective(info.config)) if name != "ddpm"]
    stepped_default = info.default_sampler != "ddpm"
    steps: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": steps_limit}
    default_fits = info.default_steps <= steps_limit  # else a request must name its steps
    choice: dict[str, Any] = {"enum": stepped}
    variants = [
        {
            "properties": {
                "sampler": _nullable(choice) if stepped_default else choice,
                "steps": _nullable(steps) if default_fits or not stepped_default else steps,
                "eta": {"type": "number", "minimum": 0.0, "maximum": 1.0},
            },
            "required": ([] if stepped_default else ["sampler"])
            + ([] if default_fits or not stepped_default else ["steps"]),
        }
    ]
    if "ddpm" in samplers_for(objective(info.config)) and info.num_timesteps <= settings.max_steps:
        # DDPM runs every timestep: allowed only then
        ddpm: dict[str, Any] = {"const": "ddpm"}
        variants.append(
            {
                "properties": {
                    "sampler": ddpm if stepped_default else _nullable(ddpm),
                    "steps": _nullable({"type": "integer", "minimum": 1}),  # ignored by DDPM
                    "eta": {"const": 0},
                },
                "required": ["sampler"] if stepped_default else [],
            }
        )
    return variants


def generate_body_schema(
    base: dict[str, Any], catalog: Catalog, settings: Settings
) -> dict[str, Any]:
    """`base` (GenerateRequest's JSON schema) narrowed to what this deployment accepts: the
    served names, its limits, and an ``anyOf`` of one variant per generator and sampler
    family; `base` itself when no generator is served."""
    names = catalog.names()
    if not names:
        return base
    variants = []
    for name in names:
        info = catalog.get(name)
        assert info is not None
        for condition in _condition_variants(info):
            for sampler in _sampler_variants(info, settings):
                variant = copy.deepcopy(base)
                variant.pop("examples", None)
                variant.pop("description", None)
                variant.pop("title", None)
                properties = variant["properties"]
                properties["architecture"] = {"const": name, "description": f"generator {name!r}"}
                properties["num_samples"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": settings.max_num_samples,
                    "default": 1,
                }
                properties.update(condition["properties"])
                properties.update(sampler["properties"])
                variant["required"] = ["architecture", *condition["required"], *sampler["required"]]
                variants.append(variant)
    first = catalog.get(names[0])
    assert first is not None
    example: dict[str, Any] = {"architecture": first.name, "num_samples": 1, "seed": 7}
    if first.is_conditional and first.condition_dim:
        example["task_embedding"] = [1.0] + [0.0] * (first.condition_dim - 1)
    # The common shape stays at the top (fields, types, no others); the variants narrow it.
    schema = copy.deepcopy(base)
    schema["properties"]["architecture"] = {
        "enum": names,
        "description": "generator name as listed by GET /architectures",
    }
    schema["properties"]["num_samples"]["maximum"] = settings.max_num_samples
    schema["examples"] = [example]
    schema["anyOf"] = variants
    if "webhook_events_filter" in schema["properties"]:
        # The filter says which events go to the webhook: it needs one.
        schema["dependentSchemas"] = {
            "webhook_events_filter": {
                "anyOf": [
                    {"properties": {"webhook_events_filter": {"type": "null"}}},
                    {"required": ["webhook"], "properties": {"webhook": {"type": "string"}}},
                ]
            }
        }
    return schema
