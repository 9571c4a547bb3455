"""The generators a gateway serves, read from their bundles' config.json (never the weights).

Built once at start from `worker.registry.discover_generators(settings.generators)`; used to
validate requests and to answer ``GET /architectures``, which also says where each name comes
from (`models.naming`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from models.bundle import HF_PREFIX
from models.naming import describe_origin, name_origin
from models.request_check import default_sampling, num_timesteps
from models.sampler_names import SamplerName

if TYPE_CHECKING:
    from worker.registry import GeneratorSource

__all__ = ["Catalog", "GeneratorInfo"]

logger = logging.getLogger("rpg.gateway")


def _count_parameters(config: Mapping[str, Any]) -> int | None:
    """Parameter values per generated model, from the tokenizer layout (no weights needed)."""
    layout = config.get("tokenizer")
    if not isinstance(layout, Mapping):
        return None
    try:
        from models.tokenizer import ParameterTokenizer

        return int(ParameterTokenizer.from_dict(layout).num_parameters)
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("cannot count parameters of generator %r: %s", config.get("name"), exc)
        return None


@dataclass(frozen=True)
class GeneratorInfo:
    """What the gateway needs to know about one generator."""

    name: str
    config: Mapping[str, Any]
    num_parameters: int | None
    condition: dict[str, Any]
    default_sampler: SamplerName
    default_steps: int
    num_timesteps: int
    source: str = ""  # the bundle directory, or "hf://org/repo[@rev]"

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any], source: str = "") -> GeneratorInfo:
        """Read the fields from a bundle's config.json dict."""
        condition = dict(config.get("condition") or {"kind": "none"})
        sampler, steps = default_sampling(config)
        return cls(
            name=name,
            config=config,
            num_parameters=_count_parameters(config),
            condition=condition,
            default_sampler=sampler,
            default_steps=steps,
            num_timesteps=num_timesteps(config),
            source=source,
        )

    @property
    def is_conditional(self) -> bool:
        """Whether requests must carry a task embedding."""
        return self.condition.get("kind") == "vector"

    @property
    def condition_dim(self) -> int | None:
        """The task embedding's length, for conditional generators."""
        dim = self.condition.get("dim")
        return int(dim) if self.is_conditional and dim is not None else None

    @property
    def labels(self) -> list[str]:
        """Class labels a ``task.positive_classes`` entry may name (may be empty)."""
        return [str(label) for label in self.condition.get("labels") or []]

    def name_source(self) -> dict[str, Any]:
        """Where the served name comes from, and how to choose another."""
        origin = name_origin(self.config)
        # a local bundle by its folder's name only: the gateway's paths are not the caller's
        bundle = self.source if self.source.startswith(HF_PREFIX) else PurePath(self.source).name
        return {"origin": origin, "bundle": bundle or None, "detail": describe_origin(origin)}

    def public(self) -> dict[str, Any]:
        """The ``GET /architectures`` entry."""
        zoo = self.config.get("zoo") or {}
        accuracy = zoo.get("accuracy_mean")
        checkpoints = zoo.get("num_checkpoints")
        return {
            "name": self.name,
            "name_source": self.name_source(),
            "architecture": dict(self.config.get("architecture") or {}),
            "num_parameters": self.num_parameters,
            "condition": self.condition,
            "defaults": {"sampler": self.default_sampler, "steps": self.default_steps},
            "num_timesteps": self.num_timesteps,
            "dataset": self.config.get("dataset"),
            "zoo_accuracy_mean": float(accuracy) if accuracy is not None else None,
            "zoo_num_checkpoints": int(checkpoints) if checkpoints is not None else None,
            "adapter": self.adapter_public(),
        }

    def adapter_public(self) -> dict[str, Any] | None:
        """An adapter generator's PEFT config and base (never where the base sits on disk)."""
        section = self.config.get("adapter")
        if not isinstance(section, Mapping):
            return None
        base = section.get("base") or {}
        return {
            "kind": section.get("kind"),
            "peft_config": section.get("peft_config"),
            "form": section.get("form"),
            "base": {
                "architecture": base.get("architecture"),
                "sha256": base.get("sha256"),
                "size_bytes": base.get("size_bytes"),
                "hub_id": base.get("hub_id"),
            },
            "files_per_sample": ["adapter_config.json", "adapter_model.safetensors"],
        }


@dataclass(frozen=True)
class Catalog:
    """Generators by name."""

    generators: dict[str, GeneratorInfo] = field(default_factory=dict)

    @classmethod
    def from_configs(cls, configs: Mapping[str, Mapping[str, Any]]) -> Catalog:
        """From ``{name: config.json dict}``."""
        return cls({name: GeneratorInfo.from_config(name, cfg) for name, cfg in configs.items()})

    @classmethod
    def from_sources(cls, sources: Mapping[str, GeneratorSource]) -> Catalog:
        """From `worker.registry.discover_generators`' ``{name: GeneratorSource}``."""
        return cls(
            {
                name: GeneratorInfo.from_config(name, src.config, source=src.source)
                for name, src in sources.items()
            }
        )

    def names(self) -> list[str]:
        """Generator names, sorted."""
        return sorted(self.generators)

    def get(self, name: str) -> GeneratorInfo | None:
        """The generator called ``name``, or None."""
        return self.generators.get(name)
