"""A generator's name: how `rpg train` chooses it, and how to tell afterwards where it came from.

The name is what the service serves a bundle under (the ``architecture`` of a request, the
queue ``rpg:<name>``). `rpg train` takes, in order: ``--name``; the zoo's architecture name
(``zoo.json``; `rpg zoo import` sets it from its ``--name``, else from its ``--out`` folder);
the zoo folder's name. The bundle's own folder plays no part. Bundles record the options they
were trained with, so `name_origin` can say which rule applied to any bundle, old ones too.
Torch-free: the gateway reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal

__all__ = ["NameOrigin", "choose_name", "describe_origin", "name_origin"]

NameOrigin = Literal["train --name", "zoo architecture", "zoo folder", "config.json"]


def choose_name(
    explicit: str | None, architecture: Mapping[str, Any] | None, zoo_path: PurePath
) -> tuple[str, NameOrigin]:
    """The name `rpg train` gives a generator, and which rule gave it."""
    if explicit:
        return explicit, "train --name"
    from_zoo = (architecture or {}).get("name")
    if from_zoo:
        return str(from_zoo), "zoo architecture"
    return zoo_path.name, "zoo folder"


def name_origin(config: Mapping[str, Any]) -> NameOrigin:
    """Which rule named the bundle whose ``config.json`` is ``config``."""
    name = config.get("name")
    training = config.get("training") or {}
    options = training.get("options") if isinstance(training, Mapping) else None
    if isinstance(options, Mapping) and options.get("name") and options.get("name") == name:
        return "train --name"
    if name and name == (config.get("architecture") or {}).get("name"):
        return "zoo architecture"
    zoo_path = (config.get("zoo") or {}).get("path")
    if name and zoo_path and PurePath(str(zoo_path)).name == name:
        return "zoo folder"
    return "config.json"


def describe_origin(origin: NameOrigin) -> str:
    """One sentence for people: where the name came from and how to choose another."""
    rename = (
        "To serve it under another name, train it with `rpg train ZOO --out DIR --name NAME` "
        '(or edit "name" in its config.json); the folder the bundle sits in does not matter.'
    )
    if origin == "train --name":
        return "Chosen when the bundle was trained (`rpg train --name`). " + rename
    if origin == "zoo architecture":
        return (
            "The architecture name of the zoo it was trained on, as `rpg train` had no "
            "--name (`rpg zoo import` names a zoo's architecture after its --out folder "
            "unless given --name). " + rename
        )
    if origin == "zoo folder":
        return (
            "The name of the zoo folder it was trained on (the zoo names no architecture), "
            "as `rpg train` had no --name. " + rename
        )
    return 'The "name" field of its config.json. ' + rename
