"""`FileLimits`: how large a file from elsewhere may be, or claim to be, before it is refused.

Zoos, bundles, generated folders and adapter folders are written by someone else; what they
say (a JSON document's size and nesting, a safetensors header's length, how many tensors and
parameters a config implies) is checked against these bounds *before* anything of that size
is read or allocated. A real file of up to the limit then costs what it costs; a lie costs
nothing.

The defaults admit the project's largest published targets (ResNet-18 zoos: 11.7M
parameters; ConvNeXt-L: 197.8M) and generators up to the `base` preset (the `small` preset
is 224.7M parameters). Each limit is read from `RPG_<FIELD>` (e.g.
`RPG_MAX_GENERATOR_PARAMETERS`): `rpg` commands read it where they start
(`FileLimits.from_environ`), the gateway and the worker through their `Settings`. Pure data:
no IO here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

__all__ = ["DEFAULT_LIMITS", "ENV_PREFIX", "FileLimits"]

ENV_PREFIX = "RPG_"


@dataclass(frozen=True)
class FileLimits:
    """Upper bounds on what a user file may hold or imply (every field: `RPG_<FIELD>`)."""

    # A JSON file (zoo.json, config.json, adapter_config.json): bytes and nesting depth.
    max_json_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 64
    # A safetensors file: its JSON header's bytes and number of tensors.
    max_safetensors_header_bytes: int = 16 * 1024 * 1024
    max_tensors: int = 100_000
    # Parameters of one target network (a zoo checkpoint, a generated sample).
    max_target_parameters: int = 250_000_000
    # Tokens of a generator's sequence (its tokenizer layout).
    max_tokens: int = 1_000_000
    # Parameters and buffers of a generator network, as its config.json implies them.
    max_generator_parameters: int = 2_000_000_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{ENV_PREFIX}{f.name.upper()} must be a positive integer, got {value!r}"
                )

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> the environment variable that sets it."""
        return {f.name: f"{ENV_PREFIX}{f.name.upper()}" for f in fields(cls)}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> FileLimits:
        """The defaults, overridden by any `RPG_MAX_*` variable set in `environ`.

        Called once where an `rpg` command starts; a malformed value is a `ValueError` that
        names the variable.
        """
        changes: dict[str, int] = {}
        for name, variable in cls.env_names().items():
            text = environ.get(variable)
            if text is None or not text.strip():
                continue
            try:
                changes[name] = int(text.strip().replace("_", ""))
            except ValueError:
                raise ValueError(f"{variable} must be a positive integer, got {text!r}") from None
        return replace(cls(), **changes)

    @classmethod
    def from_settings(cls, settings: object) -> FileLimits:
        """The limits of a `Settings` object whose fields carry the same names."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


DEFAULT_LIMITS = FileLimits()
