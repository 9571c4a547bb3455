"""MkDocs hook: the reference pages are generated from the code at build time.

A page holds a marker comment where generated Markdown goes; this hook replaces it:

    <!-- generated: http-api -->   the gateway's OpenAPI document (service/openapi.py)
    <!-- generated: cli -->        the `rpg` argument parsers (service/cli.py build_parser)
    <!-- generated: settings -->   the pydantic-settings classes (worker/settings.py,
                                   service/settings.py), through docker/settings_table.py

so a flag, field or setting added to the code shows up in the docs without anyone editing a
table, and one removed disappears. The OpenAPI document itself is written next to the page
(reference/openapi.json) for tools. Renderers live beside this file (`cli_md`, `openapi_md`);
tests/test_docs.py calls the same functions.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import cli_md  # noqa: E402
import openapi_md  # noqa: E402

MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")
OPENAPI_FILE = "reference/openapi.json"


def openapi_document() -> dict[str, Any]:
    """The document a gateway with no generators and no API keys serves at /openapi.json.

    Building the app connects to nothing (Redis clients connect lazily); the data dir is a
    temporary one because the local storage backend makes its signing secret there.
    """
    from service.app import create_app
    from service.settings import GatewaySettings

    with tempfile.TemporaryDirectory(prefix="rpg-docs-") as data_dir:
        settings = GatewaySettings(
            redis_url="redis://127.0.0.1:9/0", data_dir=Path(data_dir), generators=[]
        )
        document: dict[str, Any] = create_app(settings).openapi()
    return document


def _settings_table_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "settings_table", REPO / "docker" / "settings_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_markdown() -> str:
    """Two tables: settings every process reads, and those only the gateway reads."""
    from worker.settings import Settings

    table = _settings_table_module()
    shared = table.settings_table(only=set(Settings.model_fields))
    gateway = table.settings_table(exclude=set(Settings.model_fields))
    return (
        "### Every process (gateway, worker, webhook sender)\n\n"
        "Fields of `worker.settings.Settings`.\n\n"
        f"{shared}\n\n"
        "### Gateway only\n\n"
        "Fields that `service.settings.GatewaySettings` adds.\n\n"
        f"{gateway}\n"
    )


def generated(name: str) -> str:
    """The Markdown for one marker name."""
    if name == "http-api":
        return openapi_md.render(openapi_document())
    if name == "cli":
        return cli_md.render()
    if name == "settings":
        return settings_markdown()
    raise ValueError(f"unknown generated section {name!r}; one of http-api, cli, settings")


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs event: replace every marker in the page with its generated Markdown."""
    return MARKER.sub(lambda match: generated(match.group(1)), markdown)


def on_files(files: Any, config: Any, **_: Any) -> Any:
    """MkDocs event: publish the OpenAPI document beside the HTTP reference (as a site file,
    so pages can link to it and strict mode checks those links)."""
    from mkdocs.structure.files import File

    content = json.dumps(openapi_document(), indent=2) + "\n"
    files.append(File.generated(config, OPENAPI_FILE, content=content))
    return files
