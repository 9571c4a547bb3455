"""The documentation site: the generated reference covers the code, the build is strict and
offline, and the README's links lead somewhere."""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Pages other sessions are writing; the README links them already. Once one lands it must be
# in mkdocs.yml's nav (the test says so).
PENDING_PAGES: set[str] = set()


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_reference_hook", ROOT / "docs/hooks/reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_page_lists_every_setting_once(hook: ModuleType) -> None:
    from service.settings import GatewaySettings
    from worker.settings import Settings

    text = hook.generated("settings")
    for name in GatewaySettings.model_fields:
        assert text.count(f"| `RPG_{name.upper()}` |") == 1, name
    shared, gateway_only = text.split("### Gateway only")
    assert "`RPG_WORKER_DEVICE`" in shared and "`RPG_WORKER_DEVICE`" not in gateway_only
    assert all(f"`RPG_{n.upper()}`" not in gateway_only for n in Settings.model_fields)
    assert "`RPG_API_KEY_HASHES`" in gateway_only


def test_cli_page_lists_every_command_and_option(hook: ModuleType) -> None:
    from service.cli import build_parser

    text = hook.generated("cli")

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        assert f"`{path}` {{#{path.replace(' ', '-')}}}" in text, path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif (
                action.option_strings
                and action.help != argparse.SUPPRESS
                and not isinstance(action, argparse._HelpAction)
            ):
                assert f"`{action.option_strings[-1]}" in text, (path, action.option_strings)

    root = build_parser()
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                walk(sub, f"rpg {name}")


def test_http_page_lists_every_operation_and_schema(hook: ModuleType) -> None:
    document = hook.openapi_document()
    text = hook.openapi_md.render(document)
    for path, operations in document["paths"].items():
        for method in operations:
            assert f"### `{method.upper()} {path}`" in text
    for name in document["components"]["schemas"]:
        assert f"### {name} {{#schema-{name.lower()}}}" in text
    assert "`webhook_events_filter`" in text  # a body field, from the schema


def test_site_builds_strict_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    pages = list(site.rglob("*.html"))
    assert len(pages) > 30
    remote = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.I)
    fetched = [str(p.relative_to(site)) for p in pages if remote.search(p.read_text())]
    assert not fetched, f"pages that load assets from the network: {fetched}"
    assert (site / "reference/openapi.json").is_file()
    cli = (site / "reference/cli.html").read_text()
    assert "--trust-builder" in cli and "rpg zoo build" in cli


def test_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme)}
    local = {t for t in targets if "://" not in t}
    missing = {t for t in local if not (ROOT / t).exists()}
    assert missing <= PENDING_PAGES, f"README links to missing files: {missing - PENDING_PAGES}"
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {t for t in local - missing if t.startswith("docs/") and t.endswith(".md")}
    outside = {t for t in pages if f" {t.removeprefix('docs/')}" not in nav}
    assert not outside, f"README links to docs pages missing from mkdocs.yml's nav: {outside}"
