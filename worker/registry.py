"""Which generators a deployment serves: configs (no weights) and the worker's warm cache.

`settings.generators` lists, in any mix:

- a bundle directory (it holds `config.json`),
- a directory of bundle directories (each subdirectory with a `config.json` is one bundle),
- a Hub id `hf://org/repo[@revision]` (only `config.json` is fetched here).

A generator's name is its config's `name` (else its architecture's name); it names the job
queue (`rpg:<name>`) and is what requests put in `architecture`.

Bundles are files from elsewhere: one that cannot be served (unreadable or oversized
config.json, weights that config.json does not describe, changed weights) is skipped with its
reason (`survey_generators`, `GeneratorCache.warm`) rather than stopping the process; the
others are served. Two bundles with one name remain an error of the configuration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.bundle import CONFIG_NAME, HF_PREFIX, WEIGHTS_NAME, BundleError, read_config
from models.errors import UnsafeFileError
from models.limits import DEFAULT_LIMITS, FileLimits
from worker.errors import GeneratorConfigError

if TYPE_CHECKING:
    from models.generator import Generator
    from worker.settings import Settings

__all__ = [
    "GeneratorCache",
    "GeneratorSource",
    "GeneratorSurvey",
    "SkippedGenerator",
    "discover_generators",
    "generator_name",
    "load_generator_configs",
    "survey_generators",
]


@dataclass(frozen=True)
class GeneratorSource:
    """One served generator: its name, where it comes from, and its config.json."""

    name: str
    source: str  # a local bundle directory or "hf://org/repo[@rev]"
    config: dict[str, Any]


@dataclass(frozen=True)
class SkippedGenerator:
    """A configured bundle that is not served, and why (one line)."""

    path: str
    reason: str

    def public(self) -> dict[str, str]:
        """As `/readyz` and the logs show it."""
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class GeneratorSurvey:
    """What `settings.generators` yields: the servable bundles by name, and the skipped ones."""

    sources: dict[str, GeneratorSource]
    skipped: tuple[SkippedGenerator, ...] = ()


def generator_name(config: dict[str, Any]) -> str:
    """The name a bundle is served under (same rule as `Generator.name`)."""
    architecture = config.get("architecture") or {}
    return str(config.get("name") or architecture.get("name") or "generator")


def _hub_config(entry: str, limits: FileLimits) -> tuple[str, dict[str, Any]]:
    """(`hf://org/repo@<commit>`, config.json) of a Hub bundle, the config fetched alone
    (the weights stay remote). The commit pins the source: the worker loads the weights of
    the commit whose config was read here."""
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
        path = Path(hf_hub_download(repo, CONFIG_NAME, revision=revision or None))
        return f"{HF_PREFIX}{repo}@{path.parent.name}", read_config(path.parent, limits)
    except BundleError as exc:
        raise GeneratorConfigError(f"{entry}: {exc}") from exc
    except Exception as exc:  # network, auth, missing repo: say which entry failed
        raise GeneratorConfigError(
            f"{entry}: could not fetch {CONFIG_NAME} from the Hub ({exc}); check the repo id, "
            "HF_TOKEN, or set HF_HUB_OFFLINE=1 to use the local cache"
        ) from exc


def _local_bundle(path: Path, limits: FileLimits) -> dict[str, Any]:
    """A local bundle's config.json, checked against its weights' header (no tensor read).

    A folder without weights (a gateway may hold only the configs) gets the config's own
    checks; a worker that loads it later still checks the weights.
    """
    from models.bundle_check import check_bundle, check_config

    config = read_config(path, limits)
    if (path / WEIGHTS_NAME).exists():
        check_bundle(path, config, limits)
    else:
        check_config(path, config, limits)
    return config


def _expand(
    entry: str, limits: FileLimits
) -> tuple[list[tuple[str, dict[str, Any]]], list[SkippedGenerator]]:
    """(source, config) pairs for one `settings.generators` entry, and what was skipped."""
    if entry.startswith(HF_PREFIX):
        try:
            return [_hub_config(entry, limits)], []
        except GeneratorConfigError as exc:
            return [], [SkippedGenerator(entry, str(exc))]
    path = Path(entry).expanduser()
    if not path.is_dir():
        reason = (
            f"generator {entry!r} is not a directory; pass a bundle directory (with "
            f"{CONFIG_NAME}), a directory of bundles, or hf://org/repo"
        )
        return [], [SkippedGenerator(entry, reason)]
    bundles = (
        [path]
        if (path / CONFIG_NAME).is_file()
        else [c for c in sorted(path.iterdir()) if c.is_dir() and (c / CONFIG_NAME).is_file()]
    )
    if not bundles:
        reason = (
            f"{entry}: no generator bundles here (no {CONFIG_NAME} in it or its subdirectories); "
            "train one with `rpg train ZOO --out DIR`"
        )
        return [], [SkippedGenerator(entry, reason)]
    found, skipped = [], []
    for bundle in bundles:
        try:
            found.append((str(bundle.resolve()), _local_bundle(bundle, limits)))
        except (BundleError, UnsafeFileError) as exc:
            skipped.append(SkippedGenerator(str(bundle), str(exc)))
    return found, skipped


def survey_generators(
    entries: Iterable[str], limits: FileLimits = DEFAULT_LIMITS
) -> GeneratorSurvey:
    """Expand generator entries into servable bundles by name, reading configs and weight
    headers only; a bundle that cannot be served is skipped with its reason.

    Raises `GeneratorConfigError` for two bundles with one name (the message names both).
    """
    found: dict[str, GeneratorSource] = {}
    skipped: list[SkippedGenerator] = []
    for entry in entries:
        pairs, passed_over = _expand(str(entry), limits)
        skipped.extend(passed_over)
        for source, config in pairs:
            name = generator_name(config)
            if name in found and found[name].source != source:
                raise GeneratorConfigError(
                    f"two generators are named {name!r}: {found[name].source} and {source}; "
                    "serve only one of them, or rename one (the 'name' field of its config.json)"
                )
            found[name] = GeneratorSource(name=name, source=source, config=config)
    return GeneratorSurvey(found, tuple(skipped))


def discover_generators(
    entries: Iterable[str], limits: FileLimits = DEFAULT_LIMITS
) -> dict[str, GeneratorSource]:
    """`survey_generators`, strict: any skipped entry is a `GeneratorConfigError` (its reason)."""
    survey = survey_generators(entries, limits)
    if survey.skipped:
        raise GeneratorConfigError(survey.skipped[0].reason)
    return survey.sources


def load_generator_configs(settings: Settings) -> dict[str, dict[str, Any]]:
    """{name: config.json dict} for `settings.generators`, without loading any weights.

    The gateway validates requests and answers `GET /architectures` from these.
    """
    sources = discover_generators(settings.generators, FileLimits.from_settings(settings))
    return {name: src.config for name, src in sources.items()}


class GeneratorCache:
    """The generators a worker serves, loaded once and kept warm on one device.

    `get(name)` loads on first use (or after `warm()`), so no job pays for a reload. Safe to
    call from several threads: each generator loads once.
    """

    def __init__(
        self,
        sources: dict[str, GeneratorSource],
        *,
        device: str = "auto",
        limits: FileLimits = DEFAULT_LIMITS,
    ) -> None:
        self.sources = dict(sources)
        self.device_name = device
        self.limits = limits
        # Bundles `warm()` could not load (and no longer serves), with the reason.
        self.skipped: list[SkippedGenerator] = []
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
                self.sources[name].source,
                device=pick_device(self.device_name),
                limits=self.limits,
            )
            self._loaded[name] = generator
            return generator, time.perf_counter() - start

    def warm(self) -> dict[str, float]:
        """Load every generator now; returns {name: load seconds}.

        A bundle that fails to load (`BundleError`: its weights changed, or do not match its
        config) is dropped from `sources` and recorded in `skipped`; the others are served.
        """
        loaded: dict[str, float] = {}
        for name in self.names:
            try:
                loaded[name] = self.get(name)[1]
            except (BundleError, UnsafeFileError) as exc:
                self.skipped.append(SkippedGenerator(self.sources.pop(name).source, str(exc)))
        return loaded
