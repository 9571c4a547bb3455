"""Architecture specs and who may run their builders.

A zoo's ``zoo.json`` and a generator bundle's ``config.json`` name the function that rebuilds
their network: ``{"name": ..., "builder": "module:function", "kwargs": {...}}``. Those files
come from elsewhere (a colleague's zoo, a Hub repo), so the builder they name is untrusted
input: importing a module runs its code. The rule, the same as ``trust_remote_code``
elsewhere:

- the project's own builders (``PROJECT_BUILDERS``) run by default; their names resolve
  through this table, never through an import of what the file says;
- any other ``module:function`` runs only if the person running the command trusts it:
  ``--trust-builder MODULE`` on the command line, ``RPG_TRUSTED_BUILDERS`` in the
  environment of a command, or ``trust_builders=[...]`` on the library calls. Trust is never
  read from a zoo or bundle file;
- a builder's kwargs are JSON values only (numbers, strings, booleans, null, lists, objects).

A trust entry is a module (``mypkg.nets``: every function of that module and of its
submodules) or one function (``mypkg.nets:resnet``).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from models.zoo.errors import UntrustedBuilderError, ZooError

__all__ = [
    "PROJECT_BUILDERS",
    "TRUST_ENV",
    "add_trust_argument",
    "build_module",
    "check_spec",
    "is_trusted",
    "parse_trust",
    "trusted_builders",
]

# Builder name (what files record) -> where the function lives now. The names are the paths
# zoos and bundles have always recorded, so moving a function only changes the right side.
PROJECT_BUILDERS: dict[str, str] = {
    "models.zoo.digits:mlp": "models.zoo.digits:mlp",
    "models.zoo.digits:cnn": "models.zoo.digits:cnn",
    "models.zoo.resnet:resnet18": "models.zoo.resnet:resnet18",
}

TRUST_ENV = "RPG_TRUSTED_BUILDERS"
MAX_KWARGS_DEPTH = 16

_MODULE = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_BUILDER_RE = re.compile(rf"({_MODULE}):([A-Za-z_]\w*)")
_TRUST_RE = re.compile(rf"{_MODULE}(?::[A-Za-z_]\w*)?")


# ---------------------------------------------------------------------------- trust


def parse_trust(entries: Iterable[str] | str | None) -> tuple[str, ...]:
    """Trust entries from a list or a comma/space separated string, checked for form.

    Each entry is ``module`` or ``module:function``; anything else is a ``ValueError``.
    """
    if entries is None:
        return ()
    items = re.split(r"[,\s]+", entries) if isinstance(entries, str) else list(entries)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"a trusted builder must be a string, got {item!r}")
        item = item.strip()
        if not item:
            continue
        if not _TRUST_RE.fullmatch(item):
            raise ValueError(
                f"trusted builder {item!r} is neither a module ('mypkg.nets') nor a function "
                "('mypkg.nets:resnet')"
            )
        out.append(item)
    return tuple(dict.fromkeys(out))


def is_trusted(builder: str, trusted: Iterable[str]) -> bool:
    """Whether ``builder`` (``module:function``) is covered by one of the ``trusted`` entries."""
    module = builder.partition(":")[0]
    for entry in trusted:
        if ":" in entry:
            if entry == builder:
                return True
        elif module == entry or module.startswith(entry + "."):
            return True
    return False


def trusted_builders(
    cli_entries: Iterable[str] | None, environ: Mapping[str, str]
) -> tuple[str, ...]:
    """What a command trusts: its ``--trust-builder`` values plus ``RPG_TRUSTED_BUILDERS``.

    Called once, where a command starts; the result is passed down to the library calls.
    """
    return parse_trust([*(cli_entries or ()), *parse_trust(environ.get(TRUST_ENV))])


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--trust-builder MODULE`` option to a command that builds modules."""
    parser.add_argument(
        "--trust-builder",
        action="append",
        default=[],
        metavar="MODULE",
        help="run this architecture builder although it is not one of the project's: a module "
        "(mypkg.nets) or one function (mypkg.nets:resnet); repeatable. Also read from "
        f"{TRUST_ENV} (comma separated). Only trust code you would import yourself.",
    )


def command_trust(args: argparse.Namespace) -> tuple[str, ...]:
    """The trust of a command parsed with ``add_trust_argument``, plus the environment's."""
    try:
        return trusted_builders(getattr(args, "trust_builder", None), os.environ)
    except ValueError as e:
        raise ZooError(f"--trust-builder / {TRUST_ENV}: {e}") from e


# ---------------------------------------------------------------------------- specs


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    if depth > MAX_KWARGS_DEPTH:
        raise ZooError(f"{where} nests deeper than {MAX_KWARGS_DEPTH} levels")
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ZooError(f"{where} is {value}; builder kwargs must be finite numbers")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ZooError(f"{where} has a non-string key {key!r}")
            _check_json(item, f"{where}.{key}", depth + 1)
        return
    raise ZooError(
        f"{where} is a {type(value).__name__}; builder kwargs are JSON values only "
        "(numbers, strings, booleans, null, lists and objects)"
    )


def check_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """Check an architecture spec's form (no import): returns ``(builder, kwargs)``."""
    if not isinstance(spec, Mapping):
        raise ZooError(f"architecture spec must be a mapping, got {type(spec).__name__}")
    builder = spec.get("builder")
    if not isinstance(builder, str) or builder.count(":") != 1:
        raise ZooError(
            f"architecture spec needs 'builder' as 'module:function' "
            f"(e.g. 'models.zoo.digits:mlp'), got {builder!r}"
        )
    module_name, func_name = builder.split(":")
    if not module_name or not func_name:
        raise ZooError(f"builder {builder!r} must name both a module and a function")
    if not _BUILDER_RE.fullmatch(builder):
        raise ZooError(
            f"builder {builder!r} is not 'dotted.module:function' (Python identifiers only)"
        )
    kwargs = spec.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ZooError(f"architecture 'kwargs' must be a mapping of names, got {kwargs!r}")
    _check_json(kwargs, "architecture 'kwargs'")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise ZooError(f"architecture 'name' must be a string, got {name!r}")
    return builder, dict(kwargs)


def _import(target: str, builder: str) -> Callable[..., Any]:
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ZooError(
            f"cannot import module {module_name!r} of builder {builder!r}: {e}; "
            "is the package installed and on PYTHONPATH?"
        ) from e
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise ZooError(f"module {module_name!r} has no callable {func_name!r}")
    return func


def resolve_builder(builder: str, trust_builders: Iterable[str] = ()) -> Callable[..., Any]:
    """The function ``builder`` names, if it may run; ``UntrustedBuilderError`` otherwise.

    Project builders resolve through ``PROJECT_BUILDERS``; nothing else is imported unless
    trusted, so a refused builder's module never runs.
    """
    if builder in PROJECT_BUILDERS:
        return _import(PROJECT_BUILDERS[builder], builder)
    trusted = parse_trust(trust_builders)
    if not is_trusted(builder, trusted):
        module = builder.partition(":")[0]
        raise UntrustedBuilderError(
            builder,
            f"builder {builder!r} is not one of the project's builders and nobody trusted it, "
            f"so it was not imported: a zoo or bundle file cannot choose which code runs. If you "
            f"trust module {module!r}, pass --trust-builder {module} (or set "
            f"{TRUST_ENV}={module}, or trust_builders=[{module!r}] in Python)",
        )
    return _import(builder, builder)


def build_module(spec: Mapping[str, Any], *, trust_builders: Iterable[str] = ()) -> nn.Module:
    """Rebuild the module an architecture spec describes: resolve ``builder``, call it with kwargs.

    The project's builders always run; any other builder only when ``trust_builders`` covers
    it (a module name or ``module:function``), else ``UntrustedBuilderError``.
    """
    builder, kwargs = check_spec(spec)
    func = resolve_builder(builder, trust_builders)
    try:
        result = func(**kwargs)
    except (TypeError, ValueError) as e:
        raise ZooError(f"builder {builder!r} rejected kwargs {kwargs!r}: {e}") from e
    if not isinstance(result, nn.Module):
        raise ZooError(
            f"builder {builder!r} returned {type(result).__name__}, expected an nn.Module"
        )
    return result
