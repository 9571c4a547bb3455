"""Which generators a deployment serves: configs (no weights) and the worker's warm cache.

`settings.generators` lists, in any mix:

- a bundle directory (it holds `config.json`),
- a directory of bundle directories (each subdirectory with a `config.json` is one bundle),
- a Hub id `hf://org/repo[@revision]` (only `config.json` is fetched here).

A generator's name is its config's `name` (else its architecture's name); it names the job
queue (`rpg:<name>`) and is what requests put in `architecture`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.bundle import CONFIG_NAME, HF_PREFIX, BundleError, read_config
from worker.errors import GeneratorConfigError

if TYPE_CHECKING:
    from models.generator import Generator
    from worker.settings import Settings

__all__ = [
    "GeneratorCache",
    "GeneratorSource",
    "discover_generators",
    "generator_name",
    "load_generator_configs",
]


@dataclass(frozen=True)
class GeneratorSource:
    """One served generator: its name, where it comes from, and its config.json."""

    name: str
    source: str  # a local bundle directory or "hf://org/repo[@rev]"
    config: dict[str, Any]


def generator_name(config: dict[str, Any]) -> str:
    """The name a bundle is served under (same rule as `Generator.name`)."""
    architecture = config.get("architecture") or {}
    return str(config.get("name") or architecture.get("name") or "generator")


def _hub_config(entry: str) -> dict[str, Any]:
    """config.json of `hf://org/repo[@rev]`, fetched alone (the weights stay remote)."""
    repo, _, revision = entry[len(HF_PREFIX) :].partition("@")
    if repo.count("/") != 1:
        raise GeneratorConfigError(f"{entry!r}: expected hf://org/repo or hf://org/repo@revision")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise GeneratorConfigError(
            f"{entry!r} needs huggingface_hub: pip install 'rpg-service[hub]'"
        ) from exc
    try:
        path = hf_hub_download(repo, CONFIG_NAME, revision=revision or None)
        return read_config(Path(path).parent)
    except BundleError as exc:
        raise GeneratorConfigError(f"{entry}: {exc}") from exc
    except Exception as exc:  # network, auth, missing repo: say which entry failed
        raise GeneratorConfigError(
            f"{entry}: could not fetch {CONFIG_NAME} from the Hub ({exc}); check the repo id, "
            "HF_TOKEN, or set HF_HUB_OFFLINE=1 to use the local cache"
        ) from exc


def _expand(entry: str) -> list[tuple[str, dict[str, Any]]]:
    """(source, config) pairs for one `settings.generators` entry."""
    if entry.startswith(HF_PREFIX):
        return [(entry, _hub_config(entry))]
    path = Path(entry).expanduser()
    if not path.is_dir():
        raise GeneratorConfigError(
            f"generator {entry!r} is not a directory; pass a bundle directory (with {CONFIG_NAME}), "
            "a directory of bundles, or hf://org/repo"
        )
    try:
        if (path / CONFIG_NAME).is_file():
            return [(str(path.resolve()), read_config(path))]
        found = [
            (str(child.resolve()), read_config(child))
            for child in sorted(path.iterdir())
            if child.is_dir() and (child / CONFIG_NAME).is_file()
        ]
    except BundleError as exc:
        raise GeneratorConfigError(str(exc)) from exc
    if not found:
        raise GeneratorConfigError(
            f"{entry}: no generator bundles here (no {CONFIG_NAME} in it or its subdirectories); "
            "train one with `rpg train ZOO --out DIR`"
        )
    return found


def discover_generators(entries: Iterable[str]) -> dict[str, GeneratorSource]:
    """Expand generator entries into {name: GeneratorSource}, reading configs only.

    Raises `GeneratorConfigError` for an entry that is not a bundle, and for two bundles
    with one name (the message names both sources).
    """
    found: dict[str, GeneratorSource] = {}
    for entry in entries:
        for source, config in _expand(str(entry)):
            name = generator_name(config)
            if name in found and found[name].source != source:
                raise GeneratorConfigError(
                    f"two generators are named {name!r}: {found[name].source} and {source}; "
                    "serve only one of them, or rename one (the 'name' field of its config.json)"
                )
            found[name] = GeneratorSource(name=name, source=source, config=config)
    return found


def load_generator_configs(settings: Settings) -> dict[str, dict[str, Any]]:
    """{name: config.json dict} for `settings.generators`, without loading any weights.

    The gateway validates requests and answers `GET /architectures` from these.
    """
    return {name: src.config for name, src in discover_generators(settings.generators).items()}


class GeneratorCache:
    """The generators a worker serves, loaded once and kept warm on one device.

    `get(name)` loads on first use (or after `warm()`), so no job pays for a reload. Safe to
    call from several threads: each generator loads once.
    """

    def __init__(self, sources: dict[str, GeneratorSource], *, device: str = "auto") -> None:
        self.sources = dict(sources)
        self.device_name = device
        self._loaded: dict[str, Generator] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """The generator names, sorted."""
        return sorted(self.sources)

    @property
    def device(self) -> str:
        """Where the loaded generators live ("cpu", "cuda:0", ...)."""
        for generator in self._loaded.values():
            return str(generator.device)
        return self.device_name

    def get(self, name: str) -> tuple[Generator, float]:
        """The generator and the seconds spent loading it now (0.0 when it was warm)."""
        cached = self._loaded.get(name)
        if cached is not None:
            return cached, 0.0
        if name not in self.sources:
            raise GeneratorConfigError(
                f"this worker does not serve {name!r}; it serves {self.names}"
            )
        with self._lock:
            cached = self._loaded.get(name)
            if cached is not None:
                return cached, 0.0
            from models.generator import Generator
            from models.training import pick_device

            start = time.perf_counter()
            generator = Generator.from_pretrained(
                self.sources[name].source, device=pick_device(self.device_name)
            )
            self._loaded[name] = generator
            return generator, time.perf_counter() - start

    def warm(self) -> dict[str, float]:
        """Load every generator now; returns {name: load seconds}."""
        return {name: self.get(name)[1] for name in self.names}
