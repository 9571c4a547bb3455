"""The ``hub`` backend: one Hugging Face Hub commit per job, URLs pinned to that commit.

A job's files and a generated model card (``README.md`` beside them) go into the repo in
a single commit; each URL is ``{endpoint}/{repo_id}/resolve/{commit_id}/{path}``, so it
keeps returning exactly these bytes even after later commits change the same paths.
Which transfer protocol carries the bytes (inline, LFS or Xet) is huggingface_hub's choice.
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worker.storage.base import (
    HubSettings,
    PutResult,
    Storage,
    StorageConfigError,
    StorageError,
    StorageKeyError,
    sha256_file,
    validate_batch,
    validate_key,
)

__all__ = ["HubStorage", "render_model_card"]

CARD_NAME = "README.md"
# Enough for every file a busy worker uploaded recently; older keys need `version=`.
MAX_REMEMBERED_KEYS = 4096
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class HubStorage(Storage):
    """Commits files to ``repo_id`` under ``<path_prefix>/<key>`` through `huggingface_hub.HfApi`.

    `put_many` makes one commit holding all of a job's files plus its model card and
    returns the commit id as `PutResult.version`. `url` pins to that id: pass it as
    ``version=`` from any process, or omit it for keys this instance uploaded recently.
    """

    name = "hub"

    def __init__(self, settings: HubSettings) -> None:
        try:
            from huggingface_hub import HfApi, constants
        except ImportError as exc:
            raise StorageConfigError(
                "the 'hub' storage backend needs huggingface_hub: pip install 'rpg-service[hub]'"
            ) from exc
        if not _REPO_ID.fullmatch(settings.repo_id or ""):
            raise StorageConfigError(
                f"hub repo_id must look like 'namespace/name' (e.g. 'my-org/rpg-outputs'); "
                f"got {settings.repo_id!r}"
            )
        if settings.repo_type not in ("model", "dataset"):
            raise StorageConfigError(
                f"hub repo_type must be 'model' or 'dataset'; got {settings.repo_type!r}"
            )
        prefix = settings.path_prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self._settings = settings
        self._prefix = prefix
        self.endpoint = (settings.endpoint or constants.ENDPOINT).rstrip("/")
        self._api = HfApi(endpoint=self.endpoint, token=settings.token)
        self._repo_ready = not settings.create_repo
        self._lock = threading.Lock()
        self._commits: OrderedDict[str, str] = OrderedDict()

    def path_in_repo(self, key: str) -> str:
        """Where ``key`` lives in the repo: ``<path_prefix>/<key>`` (or ``key``)."""
        validate_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def put(self, local_path: Path, key: str) -> None:
        """Commit one file on its own (no model card); prefer `put_many` for a job's files."""
        checked = validate_batch([(local_path, key)])
        self._commit(checked, card=None, message=f"Add {key}")

    def put_many(
        self,
        files: Sequence[tuple[Path, str]],
        *,
        message: str = "",
        generation: Mapping[str, Any] | None = None,
    ) -> PutResult:
        """Commit all ``files`` plus ``<folder>/README.md`` (their model card) in one commit.

        The keys must share a folder (``jobs/<job_id>/...``): the card goes there.
        ``generation`` (the settings that produced the files) is listed in the card.
        """
        checked = validate_batch(files)
        if not checked:
            return PutResult(keys=())
        paths = [self.path_in_repo(key) for _, key in checked]
        folder = posixpath.commonpath([posixpath.dirname(path) for path in paths])
        if not folder:
            raise StorageKeyError(
                "hub uploads write a model card README.md beside the files, so the keys of one "
                f"batch must share a folder such as 'jobs/<job_id>/'; got {[k for _, k in checked]}"
            )
        card_path = f"{folder}/{CARD_NAME}"
        if card_path in paths:
            raise StorageKeyError(
                f"key for {card_path!r} collides with the generated model card; rename the file"
            )
        entries = [
            (posixpath.relpath(path, folder), sha256_file(source), source.stat().st_size)
            for (source, _), path in zip(checked, paths, strict=True)
        ]
        card = render_model_card(
            title=folder,
            files=entries,
            generation=generation or {},
            library_name=self._settings.library_name,
            tags=self._settings.tags,
        )
        summary = message or f"Add {len(checked)} generated file(s) under {folder}"
        commit_id = self._commit(checked, card=(card_path, card), message=summary)
        return PutResult(keys=tuple(key for _, key in checked), version=commit_id)

    def url(self, key: str, *, version: str | None = None) -> str:
        """``{endpoint}/{repo_id}/resolve/{commit_id}/{path}`` for ``key`` at commit ``version``."""
        from huggingface_hub import hf_hub_url

        path = self.path_in_repo(key)
        revision = version if version is not None else self._remembered(key)
        if revision is None:
            raise StorageError(
                f"no commit is known for {key!r} in this process; pass version=<the commit id "
                "returned by put_many> (store PutResult.version with the job)"
            )
        if not _COMMIT_ID.fullmatch(revision):
            raise StorageError(
                f"hub URLs are pinned to a commit id (40 lowercase hex characters); got {revision!r}"
            )
        url: str = hf_hub_url(
            self._settings.repo_id,
            path,
            repo_type=self._settings.repo_type,
            revision=revision,
            endpoint=self.endpoint,
        )
        return url

    def delete_many(self, keys: Sequence[str], *, version: str | None = None) -> None:
        """Remove the files and their model card from the branch in one commit.

        The Hub keeps history: URLs pinned to the upload's commit keep resolving until the
        repo's history is squashed (``HfApi.super_squash_history``), but the gateway no
        longer hands them out once the job is deleted.
        """
        from huggingface_hub import CommitOperationDelete

        paths = [self.path_in_repo(key) for key in keys]
        if not paths:
            return
        folders = {posixpath.dirname(path) for path in paths}
        targets = sorted(paths) + [f"{folder}/{CARD_NAME}" for folder in sorted(folders) if folder]
        present = self._present(targets)
        if not present:
            return  # already gone: deleting twice is fine
        operations = [CommitOperationDelete(path_in_repo=path) for path in present]
        with self._lock:
            try:
                self._api.create_commit(
                    repo_id=self._settings.repo_id,
                    operations=operations,
                    commit_message=f"Delete {len(paths)} generated file(s)",
                    repo_type=self._settings.repo_type,
                    revision=self._settings.revision,
                )
            except Exception as exc:
                raise StorageError(
                    f"hub delete in {self._settings.repo_id!r} at {self.endpoint} failed: {exc}"
                ) from exc
            for key in keys:
                self._commits.pop(key, None)

    def _present(self, paths: Sequence[str]) -> list[str]:
        """Which of ``paths`` exist on the branch (the Hub refuses to delete missing files)."""
        try:
            return [
                path
                for path in paths
                if self._api.file_exists(
                    self._settings.repo_id,
                    path,
                    repo_type=self._settings.repo_type,
                    revision=self._settings.revision,
                )
            ]
        except Exception as exc:
            raise StorageError(
                f"hub repo {self._settings.repo_id!r} at {self.endpoint} could not be read: {exc}"
            ) from exc

    def _commit(
        self,
        checked: Sequence[tuple[Path, str]],
        *,
        card: tuple[str, str] | None,
        message: str,
    ) -> str:
        """Create one commit with ``checked`` files (and the card); remember and return its id."""
        from huggingface_hub import CommitOperationAdd

        operations = [
            CommitOperationAdd(path_in_repo=self.path_in_repo(key), path_or_fileobj=str(source))
            for source, key in checked
        ]
        if card is not None:
            operations.append(
                CommitOperationAdd(path_in_repo=card[0], path_or_fileobj=card[1].encode("utf-8"))
            )
        repo_id = self._settings.repo_id
        with self._lock:
            self._ensure_repo()
            try:
                info = self._api.create_commit(
                    repo_id=repo_id,
                    operations=operations,
                    commit_message=message,
                    repo_type=self._settings.repo_type,
                    revision=self._settings.revision,
                )
            except Exception as exc:  # network, HTTP and protocol errors all mean "not stored"
                raise StorageError(
                    f"hub commit to {repo_id!r} (branch {self._settings.revision!r}) at "
                    f"{self.endpoint} failed: {exc}"
                ) from exc
            commit_id = str(info.oid)
            for _, key in checked:
                self._commits[key] = commit_id
                self._commits.move_to_end(key)
            while len(self._commits) > MAX_REMEMBERED_KEYS:
                self._commits.popitem(last=False)
        return commit_id

    def _ensure_repo(self) -> None:
        """Create the repo once per process when ``create_repo`` is set (existing is fine)."""
        if self._repo_ready:
            return
        try:
            self._api.create_repo(
                self._settings.repo_id,
                repo_type=self._settings.repo_type,
                private=self._settings.private,
                exist_ok=True,
            )
        except Exception as exc:
            raise StorageError(
                f"could not create or find hub repo {self._settings.repo_id!r} at {self.endpoint} "
                f"(check the token's write access): {exc}"
            ) from exc
        self._repo_ready = True

    def _remembered(self, key: str) -> str | None:
        with self._lock:
            return self._commits.get(key)


def render_model_card(
    *,
    title: str,
    files: Sequence[tuple[str, str, int]],
    generation: Mapping[str, Any],
    library_name: str,
    tags: Sequence[str],
) -> str:
    """A model card: YAML front matter (library_name, tags) and a body listing the files.

    ``files`` holds ``(name, sha256, size_bytes)``; ``generation`` is shown as JSON. An
    adapter job (``generation["adapter"]`` set) gets a PEFT card: ``library_name: peft``,
    ``base_model`` when the base has a Hub id, and how to load each sample folder.
    """
    from huggingface_hub import ModelCardData

    adapter = generation.get("adapter")
    if adapter:
        return _adapter_card(title, files, generation, adapter, tags)
    front_matter = ModelCardData(library_name=library_name, tags=list(tags)).to_yaml()
    rows = "\n".join(f"| `{name}` | {size} | `{digest}` |" for name, digest, size in files)
    # Backticks are escaped so no value can close the code fence and inject markdown.
    settings_json = json.dumps(dict(generation), indent=2, sort_keys=True, default=str)
    settings_json = settings_json.replace("`", "\\u0060")
    return (
        f"---\n{front_matter}\n---\n\n"
        f"# Generated weights: {title}\n\n"
        "Neural-network parameters sampled by an RPG generator (recurrent diffusion for "
        "parameter generation). Each `.safetensors` file is one state dict; rebuild the "
        "architecture named below and load it with `load_state_dict(..., strict=True)`.\n\n"
        "## Files\n\n"
        "| file | size (bytes) | sha256 |\n"
        "|---|---|---|\n"
        f"{rows}\n\n"
        "## Generation settings\n\n"
        f"```json\n{settings_json}\n```\n"
    )


def _adapter_card(
    title: str,
    files: Sequence[tuple[str, str, int]],
    generation: Mapping[str, Any],
    adapter: Mapping[str, Any],
    tags: Sequence[str],
) -> str:
    """The model card of a job of PEFT adapter folders (see ``render_model_card``)."""
    from huggingface_hub import ModelCardData

    base_model = adapter.get("base_model")
    data = ModelCardData(
        library_name="peft",
        base_model=base_model or None,
        tags=[*tags, "lora", "peft"],
    )
    rows = "\n".join(f"| `{name}` | {size} | `{digest}` |" for name, digest, size in files)
    settings_json = json.dumps(dict(generation), indent=2, sort_keys=True, default=str)
    settings_json = settings_json.replace("`", "\\u0060")
    samples = sorted({name.split("/")[0] for name, _, _ in files if "/" in name})
    first = samples[0] if samples else "sample_000"
    base_line = (
        f"`{base_model}`"
        if base_model
        else "the base network named in the settings below (its sha256 is recorded there)"
    )
    return (
        f"---\n{data.to_yaml()}\n---\n\n"
        f"# Generated LoRA adapters: {title}\n\n"
        "LoRA adapters sampled by an RPG generator (recurrent diffusion for parameter "
        f"generation). Each folder ({', '.join(f'`{s}`' for s in samples)}) is one PEFT adapter "
        f"of {base_line}: load it with\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        f'model = PeftModel.from_pretrained(base, "<this repo>", subfolder="{title}/{first}")\n'
        "```\n\n"
        "## Files\n\n"
        "| file | size (bytes) | sha256 |\n"
        "|---|---|---|\n"
        f"{rows}\n\n"
        "## Generation settings\n\n"
        f"```json\n{settings_json}\n```\n"
    )
