"""A local HTTP double of the few Hugging Face Hub endpoints the hub backend uses.

Endpoints (shapes read from huggingface_hub's ``hf_api.py`` / ``_commit_api.py``, 2.4.0):

- ``POST /api/repos/create``: JSON ``{name, organization, type, visibility|private}``;
  ``200 {"url"}``, or ``409`` when the repo exists (``create_repo(exist_ok=True)`` accepts it).
- ``POST /api/{type}s/{ns}/{name}/preupload/{rev}``: JSON ``{files: [{path, sample, size}]}``;
  answers ``uploadMode: "regular"`` for every file, so the client sends contents inline in the
  commit (the real Hub answers "lfs" for large files and ``*.safetensors``, which the client
  then uploads through Xet/LFS, a protocol this double does not speak).
- ``POST /api/{type}s/{ns}/{name}/commit/{rev}``: NDJSON, a ``header`` line then one ``file``
  line per file (base64 content); ``200 {"commitOid", "commitUrl"}``.
- ``GET /api/{type}s/{ns}/{name}``: minimal repo info (``create_repo(exist_ok=True)`` asks
  for it after a 401/403 to learn whether the repo already exists).
- ``GET|HEAD /[datasets/]{ns}/{name}/resolve/{rev}/{path}``: the bytes at a branch or commit.

It stores what it receives (every commit is a full snapshot), checks the bearer token on
writes and on private reads, and answers unknown routes with 404 (recorded in ``unhandled``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

_INFO = re.compile(r"/api/(models|datasets)/([^/]+/[^/]+)")
_API = re.compile(r"/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit)/([^/]+)")
_RESOLVE = re.compile(r"/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    """One commit: its id, parent, message and the full tree (path -> bytes) after it."""

    oid: str
    parent: str | None
    summary: str
    description: str
    tree: dict[str, bytes]
    added: list[str]


@dataclass
class Repo:
    """A repo: its type, visibility, branches (name -> commit id) and commits (id -> Commit)."""

    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def history(self, branch: str = "main") -> list[Commit]:
        """Commits reachable from ``branch``, oldest first."""
        chain: list[Commit] = []
        oid: str | None = self.branches[branch]
        while oid is not None:
            chain.append(self.commits[oid])
            oid = self.commits[oid].parent
        return chain[::-1]


class _Reply(Exception):
    def __init__(
        self, status: int, message: str, error_code: str | None = None, **extra: Any
    ) -> None:
        super().__init__(status)
        self.status, self.error_code = status, error_code
        self.body = {"error": message, **extra}


class HubDouble:
    """Serves the endpoints above on 127.0.0.1; ``url`` is what to pass as ``endpoint``."""

    def __init__(self, token: str = "hf_double_token") -> None:
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.unhandled: list[str] = []
        self._lock = threading.Lock()
        self._counter = 0
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                double._dispatch(self)

            def do_HEAD(self) -> None:
                double._dispatch(self)

            def do_POST(self) -> None:
                double._dispatch(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """The stored repo (KeyError if it was never created)."""
        return self.repos[(repo_type, repo_id)]

    # --- request handling --------------------------------------------------------------

    def _dispatch(self, request: BaseHTTPRequestHandler) -> None:
        path = urlsplit(request.path).path
        try:
            with self._lock:
                status, body, headers = self._route(request, path)
        except _Reply as reply:
            status, headers = reply.status, {}
            body = json.dumps(reply.body).encode()
            headers["Content-Type"] = "application/json"
            if reply.error_code:
                headers["X-Error-Code"] = reply.error_code
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)

    def _route(
        self, request: BaseHTTPRequestHandler, path: str
    ) -> tuple[int, bytes, dict[str, str]]:
        if request.command == "POST" and path == "/api/repos/create":
            self._require_token(request)
            return self._json(self._create_repo(self._read_json(request)))
        api = _API.fullmatch(path)
        if request.command == "POST" and api:
            self._require_token(request)
            repo = self._find(api.group(1)[:-1], api.group(2))
            branch = self._branch(repo, unquote(api.group(4)))
            if api.group(3) == "preupload":
                return self._json(self._preupload(repo, branch, self._read_json(request)))
            return self._json(self._commit(repo, branch, self._read_body(request)))
        info = _INFO.fullmatch(path)
        if request.command == "GET" and info:
            return self._json(self._repo_info(request, info.group(1)[:-1], info.group(2)))
        resolve = _RESOLVE.fullmatch(path)
        if request.command in ("GET", "HEAD") and resolve:
            return self._resolve(request, resolve)
        self.unhandled.append(f"{request.command} {request.path}")
        raise _Reply(404, f"the hub double does not implement {request.command} {path}")

    def _create_repo(self, payload: dict[str, Any]) -> dict[str, Any]:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.url}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            # create_repo(exist_ok=True) reads "url" from this 409 body too.
            raise _Reply(409, "You already created this repo", url=url)
        private = payload.get("visibility") == "private" or payload.get("private") is True
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
        self.repos[(repo_type, repo_id)] = repo
        # The Hub starts every repo with one commit holding .gitattributes.
        self._add_commit(
            repo, "main", "initial commit", "", {".gitattributes": b"*.bin filter=lfs\n"}
        )
        return {"url": url, "name": repo_id}

    def _preupload(self, repo: Repo, branch: str, payload: dict[str, Any]) -> dict[str, Any]:
        tree = repo.commits[repo.branches[branch]].tree
        files = []
        for item in payload["files"]:
            base64.b64decode(item["sample"], validate=True)  # the client sends a real sample
            existing = tree.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(existing) if existing is not None else None,
                }
            )
        return {"files": files, "commitOid": repo.branches[branch]}

    def _commit(self, repo: Repo, branch: str, body: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _Reply(400, "a commit payload starts with a 'header' line")
        header = lines[0]["value"]
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "deletedFile":
                if value["path"] not in repo.commits[repo.branches[branch]].tree:
                    raise _Reply(404, f"cannot delete {value['path']}: no such file")
                deleted.append(value["path"])
                continue
            if line["key"] != "file" or value.get("encoding") != "base64":
                raise _Reply(
                    422, f"the hub double stores only inline base64 files, got {line['key']}"
                )
            files[value["path"]] = base64.b64decode(value["content"], validate=True)
        oid = self._add_commit(
            repo, branch, header["summary"], header.get("description", ""), files, deleted
        )
        prefix = "datasets/" if repo.repo_type == "dataset" else ""
        return {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.url}/{prefix}{repo.repo_id}/commit/{oid}",
            "hookOutput": "",
        }

    def _repo_info(
        self, request: BaseHTTPRequestHandler, repo_type: str, repo_id: str
    ) -> dict[str, Any]:
        # The Hub refuses a bad token outright, even for public repos.
        if "Authorization" in request.headers or self._find(repo_type, repo_id).private:
            self._require_token(request)
        repo = self._find(repo_type, repo_id)
        return {"id": repo.repo_id, "sha": repo.branches["main"], "private": repo.private}

    def _resolve(
        self, request: BaseHTTPRequestHandler, match: re.Match[str]
    ) -> tuple[int, bytes, dict[str, str]]:
        repo = self._find("dataset" if match.group(1) else "model", match.group(2))
        if repo.private:
            self._require_token(request)
        revision = unquote(match.group(3))
        oid = repo.branches.get(revision, revision)
        if oid not in repo.commits:
            raise _Reply(404, f"revision {revision} not found", "RevisionNotFound")
        data = repo.commits[oid].tree.get(unquote(match.group(4)))
        if data is None:
            raise _Reply(404, "entry not found", "EntryNotFound")
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(data)}"',
            "X-Repo-Commit": oid,
        }
        return 200, data, headers

    # --- helpers -----------------------------------------------------------------------

    def _add_commit(
        self,
        repo: Repo,
        branch: str,
        summary: str,
        description: str,
        files: dict[str, bytes],
        deleted: Sequence[str] = (),
    ) -> str:
        parent = repo.branches.get(branch)
        tree = dict(repo.commits[parent].tree) if parent else {}
        tree.update(files)
        for path in deleted:
            tree.pop(path, None)
        self._counter += 1
        seed = json.dumps([parent, summary, self._counter, sorted(files)]).encode()
        oid = hashlib.sha1(seed).hexdigest()
        repo.commits[oid] = Commit(oid, parent, summary, description, tree, sorted(files))
        repo.branches[branch] = oid
        return oid

    def _find(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, unquote(repo_id)))
        if repo is None:
            raise _Reply(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _branch(repo: Repo, revision: str) -> str:
        if revision not in repo.branches:
            raise _Reply(404, f"branch {revision} not found", "RevisionNotFound")
        return revision

    def _require_token(self, request: BaseHTTPRequestHandler) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise _Reply(401, "Invalid credentials in Authorization header")

    @staticmethod
    def _read_body(request: BaseHTTPRequestHandler) -> bytes:
        length = request.headers.get("Content-Length")
        if length is None:
            raise _Reply(411, "Content-Length required")
        return request.rfile.read(int(length))

    def _read_json(self, request: BaseHTTPRequestHandler) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._read_body(request))
        return data

    @staticmethod
    def _json(payload: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        return 200, json.dumps(payload).encode(), {"Content-Type": "application/json"}
