"""The documentation's runnable blocks run, at a small size, as a reader would run them.

Each page's marked blocks run in order in one bash process (so `cd`, files and background
servers carry over from block to block), in a fresh temporary directory, with this
interpreter's bin directory first on the PATH; python blocks run with this interpreter. The
process group is killed afterwards, which stops any `rpg serve` / `rpg worker` a page left
running. See tests/docs/blocks.py for the markers.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.docs.blocks import LANGUAGES, Page, marked_pages, read_page, tutorial_pages

PAGE_TIMEOUT_S = 480


def test_every_tutorial_block_is_marked() -> None:
    unmarked = [
        block.where()
        for page in tutorial_pages()
        if page.skip_reason is None
        for block in page.blocks
        if block.language in LANGUAGES and block.action is None
    ]
    assert not unmarked, (
        "mark each block <!-- docs-test: run --> (with replacements for a small size) or "
        f"<!-- docs-test: skip (why) -->: {unmarked}"
    )


def test_the_tutorials_run_in_ci() -> None:
    runnable = {page.path.name for page in marked_pages()}
    assert {"first-model.md", "own-zoo.md", "task-conditioned.md"} <= runnable
    compose = read_page(Path(__file__).resolve().parents[2] / "docs/tutorials/compose.md")
    assert compose.skip_reason is not None  # needs Docker and a GPU


def test_markers_and_replacements_are_read(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        '<!-- docs-test: run; "--steps 1000" => "--steps 3"; "A" => "B {port}" -->\n'
        "```bash\nrpg train z --steps 1000 A\n```\n\n"
        "```text\n<!-- docs-test: run -->\n```\n"
        "```bash\nunmarked\n```\n"
        "<!-- docs-test: skip (needs a GPU) -->\n\n```python\nprint(1)\n```\n"
    )
    blocks = read_page(page).blocks
    assert [(b.language, b.action) for b in blocks] == [
        ("bash", "run"),
        ("text", None),
        ("bash", None),
        ("python", "skip"),
    ]
    assert blocks[0].runnable_code(9) == "rpg train z --steps 3 B 9\n"
    blocks[0].replacements.append(("--gone", "x"))
    with pytest.raises(ValueError, match="matches nothing"):
        blocks[0].runnable_code(9)


def _script(page: Page, work: Path, port: int) -> str:
    lines = ["set -euo pipefail"]
    for number, block in enumerate(b for b in page.blocks if b.action == "run"):
        code = block.runnable_code(port)
        lines.append(f"echo {shlex.quote(f'### docs-test block {block.where()}')}")
        if block.language == "python":
            source = work.parent / f"block_{number}.py"
            source.write_text(code, encoding="utf-8")
            lines.append(f"{shlex.quote(sys.executable)} - < {shlex.quote(str(source))}")
        else:
            lines.append(code)
    lines.append("echo '### docs-test done'")
    return "\n".join(lines) + "\n"


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPG_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the page's whole process group, then SIGKILL to whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-6000:]


@pytest.mark.slow
@pytest.mark.parametrize("page", marked_pages(), ids=lambda page: page.path.name)
def test_page_runs(page: Page, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    script = _script(page, work, free_port())
    log = tmp_path / "output.log"
    # Output goes to a file, not a pipe: servers a page leaves in the background keep a
    # pipe open, and the page is done when its shell is, not when they are.
    with log.open("w") as sink:
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=work,
            env=_environment(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            process.wait(timeout=PAGE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{page.path.name} ran over {PAGE_TIMEOUT_S} s:\n{_tail(log)}")
        finally:
            _stop_group(process)
            if (work / "data").is_dir():
                from worker.redis_embedded import stop_embedded_redis

                stop_embedded_redis(work / "data")
    output = log.read_text(errors="replace")
    assert process.returncode == 0, f"{page.path.name} failed:\n{output[-6000:]}"
    assert "### docs-test done" in output
