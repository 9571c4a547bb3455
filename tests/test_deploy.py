"""The deployment files (docker-compose.yml, docker/*.Dockerfile, .dockerignore) checked
against the code they deploy: settings names, CLI commands, routes, health checks.

No Docker engine is needed: the files are parsed, and what they would run is run here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from service.cli import build_parser
from service.settings import GatewaySettings as Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "gateway": ROOT / "docker" / "gateway.Dockerfile",
    "worker": ROOT / "docker" / "worker.Dockerfile",
}
APP_SERVICES = ("gateway", "worker", "worker-cpu", "webhooks")  # built from our Dockerfiles
SETTINGS_VARIABLES = {f"RPG_{name}".upper() for name in Settings.model_fields}


def _load_script(name: str) -> ModuleType:
    """A docker/*.py helper script as a module (docker/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"docker_{name}", ROOT / "docker" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ Dockerfiles


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM that opened its stage


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    instructions = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = instructions[-1].stage
    return [i for i in instructions if i.stage == last]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form instruction (after any --options)."""
    text = instruction.args
    while text.startswith("--"):
        text = text.split(" ", 1)[1].lstrip()
    if instruction.keyword == "HEALTHCHECK":
        assert text.startswith("CMD "), f"HEALTHCHECK must use CMD: {instruction.args}"
        text = text[len("CMD ") :]
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def env_values(instructions: list[Instruction]) -> dict[str, str]:
    """KEY=VALUE pairs of the ENV instructions given."""
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.args):
                key, _, value = item.partition("=")
                values[key] = value
    return values


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Instruction]]:
    return request.param, parse_dockerfile(DOCKERFILES[request.param])


def test_base_images_are_pinned(dockerfile: tuple[str, list[Instruction]]) -> None:
    _, instructions = dockerfile
    stage_names: set[str] = set()
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        image, *rest = instruction.args.split()
        if rest[:1] and rest[0].upper() == "AS":
            stage_names.add(rest[1])
        if image in stage_names:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image}: pin a tag (image:version)"
        assert tag != "latest" and re.search(r"\d", tag), f"{image}: pin a versioned tag"


def test_no_remote_add_and_sources_are_in_the_context(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    _, instructions = dockerfile
    patterns = dockerignore_patterns()
    for instruction in instructions:
        if instruction.keyword == "ADD":
            assert "http://" not in instruction.args and "https://" not in instruction.args
        if instruction.keyword in ("COPY", "ADD") and "--from=" not in instruction.args:
            *sources, _ = instruction.args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{instruction.args}: {source} is missing"
                assert not is_ignored(source, patterns), f"{source} is in .dockerignore"


def test_final_stage_runs_rpg_as_a_non_root_user(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    name, instructions = dockerfile
    final = final_stage(instructions)
    keywords = [i.keyword for i in final]
    assert "USER" in keywords, f"{name}: the final stage never leaves root"
    user_at = max(i for i, k in enumerate(keywords) if k == "USER")
    assert final[user_at].args.split(":")[0] not in ("root", "0")
    for keyword in ("ENTRYPOINT", "CMD"):
        assert keyword in keywords
        assert keywords.index(keyword) > user_at, f"{name}: USER must come before {keyword}"
    entrypoint = exec_form(next(i for i in final if i.keyword == "ENTRYPOINT"))
    assert entrypoint == ["rpg"]


def test_cmd_is_a_real_rpg_command(dockerfile: tuple[str, list[Instruction]]) -> None:
    name, instructions = dockerfile
    cmd = exec_form(next(i for i in final_stage(instructions) if i.keyword == "CMD"))
    expected = {"gateway": "serve", "worker": "worker"}[name]
    args = build_parser().parse_args(cmd)
    assert args.command == expected and callable(args.func)


def test_final_stage_environment_and_healthcheck(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    _, instructions = dockerfile
    final = final_stage(instructions)
    env = env_values(final)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["RPG_GENERATORS"] == "/generators"  # the volume compose mounts
    assert env["HF_HOME"].startswith("/cache/")
    assert set(k for k in env if k.startswith("RPG_")) <= SETTINGS_VARIABLES
    checks = [i for i in final if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = exec_form(checks[0])
    assert command[:2] == ["python", "/usr/local/bin/rpg-healthcheck"]
    copied = [i.args for i in final if i.keyword == "COPY"]
    assert "docker/healthcheck.py /usr/local/bin/rpg-healthcheck" in copied


def test_gateway_healthcheck_targets_healthz() -> None:
    final = final_stage(parse_dockerfile(DOCKERFILES["gateway"]))
    check = exec_form(next(i for i in final if i.keyword == "HEALTHCHECK"))
    assert check[2] == "gateway"
    env = env_values(final)
    cmd = exec_form(next(i for i in final if i.keyword == "CMD"))
    # the health check's default URL uses RPG_PORT: it must be the port the server binds
    assert cmd[cmd.index("--port") + 1] == env["RPG_PORT"]


def test_build_tools_stay_in_the_build_stage(dockerfile: tuple[str, list[Instruction]]) -> None:
    name, instructions = dockerfile
    stages = {i.stage for i in instructions}
    assert len(stages) >= 2, f"{name}: use a build stage"
    final = final_stage(instructions)
    for instruction in final:
        if instruction.keyword == "RUN":
            for tool in ("build-essential", "gcc", "apt-get install", "pip install"):
                assert tool not in instruction.args, f"{name}: {tool!r} in the final stage"
    assert any(i.keyword == "COPY" and "--from=build /opt/venv" in i.args for i in final)
    installs = [i for i in instructions if i.keyword == "RUN" and "pip install" in i.args]
    package = [i for i in installs if "rpg_service-" in i.args]
    assert package and all("[s3,hub]" in i.args for i in package)


def _pyproject_torch() -> SpecifierSet:
    """The torch requirement of pyproject.toml's dependencies."""
    match = re.search(r'^\s*"torch([<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "pyproject.toml lists no torch dependency"
    return SpecifierSet(match.group(1))


def test_gateway_installs_cpu_torch_within_the_package_range() -> None:
    instructions = parse_dockerfile(DOCKERFILES["gateway"])
    arg = next(i.args for i in instructions if i.args.startswith("TORCH_VERSION="))
    version = arg.split("=", 1)[1]
    assert Version(version) in _pyproject_torch()
    # the Makefile's pin is what CI tests: the image should run the same torch
    makefile = (ROOT / "Makefile").read_text()
    assert f"torch=={version}" in makefile
    runs = [i.args for i in instructions if i.keyword == "RUN"]
    torch_at = next(n for n, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_at]
    package_at = next(n for n, r in enumerate(runs) if "rpg_service-" in r)
    assert torch_at < package_at, "install CPU torch before the package"


def test_worker_base_image_has_cuda_torch_within_the_package_range() -> None:
    instructions = parse_dockerfile(DOCKERFILES["worker"])
    images = {i.args.split()[0] for i in instructions if i.keyword == "FROM"}
    assert len(images) == 1, "build and final stage must share the base (the venv links to it)"
    image = images.pop()
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+)\.\d+-cudnn\d+-runtime", image)
    assert match, f"{image}: expected pytorch/pytorch:<torch>-cuda<x.y>-cudnn<n>-runtime"
    assert Version(match.group(1)) in _pyproject_torch()
    assert int(match.group(2)) >= 12
    assert any("--system-site-packages" in i.args for i in instructions if i.keyword == "RUN")


# ------------------------------------------------------------------------------ .dockerignore


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's glob: `*` and `?` stay within one path segment, `**/` spans any number."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context: the last matching pattern
    wins (`!` re-includes), and a pattern that matches a directory excludes its contents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _glob_regex(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "data/redis/appendonly.aof",
        ".git/HEAD",
        ".env",
        "models/__pycache__/rpg.cpython-311.pyc",
        "tests/test_deploy.py",
        "generators/digits-mlp/model.safetensors",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert is_ignored(path, dockerignore_patterns())


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "models/rpg.py", "docker/healthcheck.py"]
)
def test_dockerignore_keeps_the_image_inputs(path: str) -> None:
    assert not is_ignored(path, dockerignore_patterns())


# ------------------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def service_env(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.partition("=") for item in env]
        return {key: (value if sep else None) for key, sep, value in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's substitution with an empty host environment: defaults, `$$` -> `$`."""
    return _VARIABLE.sub(lambda m: "$" if m.group(0) == "$$" else (m.group(2) or ""), value)


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "redis",
        "minio",
        "minio-init",
        "gateway",
        "worker",
        "worker-cpu",
        "webhooks",
    }
    for name, service in compose["services"].items():
        if name == "minio-init":
            assert service["restart"] == "no"  # one-shot
            continue
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, f"{name}: healthcheck in exec form"


def test_redis_is_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    command = redis_service["command"]
    if isinstance(command, str):
        command = shlex.split(command)
    assert command[0] == "redis-server"
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert redis_service["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert any(v.endswith(":/data") for v in redis_service["volumes"])
    assert "ports" not in redis_service  # Redis has no password here: keep it internal


def test_app_services_wait_for_redis_and_the_bucket(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["minio"]["healthcheck"]["test"][1:] == ["mc", "ready", "local"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["minio-init"]["condition"] == "service_completed_successfully"


def test_every_rpg_variable_is_a_setting(compose: dict[str, Any]) -> None:
    """Container variables and host-side `${RPG_...}` substitutions alike: RPG_* names only
    settings (host-only knobs of the compose file use DEPLOY_*)."""
    text = (ROOT / "docker-compose.yml").read_text()
    named = set(re.findall(r"\bRPG_[A-Z0-9_]+", text))
    for service in compose["services"].values():
        named |= {key for key in service_env(service) if key.startswith("RPG_")}
    unknown = sorted(named - SETTINGS_VARIABLES)
    assert not unknown, f"not fields of service.settings.GatewaySettings: {unknown}"
    assert len(named) >= 10


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_builds_valid_settings(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's environment, with compose's defaults, is accepted by Settings."""
    import os

    for key in list(os.environ):
        if key.startswith("RPG_"):
            monkeypatch.delenv(key)
    env = service_env(compose["services"][name])
    for key, value in env.items():
        if key.startswith("RPG_") and value is not None:
            monkeypatch.setenv(key, interpolate(value))
    settings = Settings()
    redis_url = settings.redis_url or ""
    assert re.fullmatch(r"redis://redis:6379/\d+", redis_url), redis_url
    storage = settings.storage_settings()
    assert storage.backend == "s3" and storage.s3 is not None
    assert storage.s3.endpoint_url == "http://minio:9000"
    assert storage.s3.addressing_style == "path"
    assert storage.s3.public_endpoint_url == "http://localhost:9000"
    assert settings.signing_secret
    assert settings.generators == ["/generators"]


def test_gateway_and_workers_share_redis_storage_and_secrets(compose: dict[str, Any]) -> None:
    def shared(name: str) -> dict[str, str | None]:
        env = service_env(compose["services"][name])
        return {
            k: v
            for k, v in env.items()
            if k.startswith(("RPG_S3_", "RPG_HUB_"))
            or k
            in (
                "RPG_STORAGE",
                "RPG_REDIS_URL",
                "RPG_SIGNING_SECRET",
                "RPG_GENERATORS",
                "RPG_URL_TTL_S",
                "RPG_JOB_TIMEOUT_S",
            )
        }

    gateway = shared("gateway")
    assert gateway["RPG_STORAGE"] == "s3"
    for name in ("worker", "worker-cpu"):
        assert shared(name) == gateway, name


def test_minio_serves_the_configured_bucket_and_credentials(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway = service_env(services["gateway"])
    minio = service_env(services["minio"])
    init = services["minio-init"]
    init_env = service_env(init)
    assert minio["MINIO_ROOT_USER"] == gateway["RPG_S3_ACCESS_KEY_ID"]
    assert minio["MINIO_ROOT_PASSWORD"] == gateway["RPG_S3_SECRET_ACCESS_KEY"]
    assert init_env["BUCKET"] == gateway["RPG_S3_BUCKET"]
    script = interpolate(" ".join(init["command"]))
    assert "mc mb --ignore-existing" in script and '"rpg/$BUCKET"' in script
    published = [interpolate(p).split(":")[-2:] for p in services["minio"]["ports"]]
    public = interpolate(str(gateway["RPG_S3_PUBLIC_ENDPOINT_URL"]))
    assert [public.rsplit(":", 1)[1], "9000"] in published  # clients reach the S3 API there


def test_gateway_publishes_its_port_and_checks_healthz(compose: dict[str, Any]) -> None:
    from service.routes.health import router

    gateway = compose["services"]["gateway"]
    command = gateway["command"]
    port = command[command.index("--port") + 1]
    assert any(interpolate(p).endswith(f":{port}") for p in gateway["ports"])
    test = gateway["healthcheck"]["test"]
    url = test[test.index("--url") + 1]
    assert url == f"http://127.0.0.1:{port}/healthz"
    assert "/healthz" in {getattr(route, "path", None) for route in router.routes}


def test_gpu_worker_and_cpu_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "profiles" not in services["worker"]  # `docker compose up` starts the GPU worker
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in services["worker-cpu"]
    for name in ("worker", "worker-cpu"):
        grace = services[name]["stop_grace_period"]
        assert re.fullmatch(r"\d+[ms]", grace) and (int(grace[:-1]) >= 30 or grace[-1] == "m")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_commands_are_real_rpg_commands(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
    final = final_stage(parse_dockerfile(dockerfile))
    entrypoint = exec_form(next(i for i in final if i.keyword == "ENTRYPOINT"))
    assert "entrypoint" not in service and entrypoint == ["rpg"]
    command = service["command"]
    assert isinstance(command, list), f"{name}: use the exec (list) form"
    args = build_parser().parse_args(command)
    expected = {"gateway": "serve", "webhooks": "webhooks"}.get(name, "worker")
    assert args.command == expected
    if name.startswith("worker"):
        assert args.device == ("cuda" if name == "worker" else "cpu")
        # the CPU image's own HEALTHCHECK is the gateway's: workers must override it
        assert service["healthcheck"]["test"][1:] == [
            "python",
            "/usr/local/bin/rpg-healthcheck",
            "worker",
        ]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_volumes_match_the_images(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    mounts = {v.split(":")[1]: v for v in (interpolate(m) for m in service["volumes"])}
    assert mounts["/generators"].endswith(":ro")  # bundles are read, never written
    assert "/data" in mounts
    hf_home = service_env(service)["HF_HOME"]
    assert hf_home in mounts
    declared = set(compose["volumes"])
    for volume in mounts.values():
        source = volume.split(":")[0]
        if not source.startswith((".", "/")):
            assert source in declared, f"{source}: declare it under volumes:"


# ------------------------------------------------------------------------------ entry points


@pytest.mark.parametrize("command", [["serve", "--help"], ["worker", "--help"]])
def test_entrypoints_run_outside_containers(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: rpg {command[0]}")
    assert "--redis-url" in done.stdout and "--generators" in done.stdout


# ------------------------------------------------------------------------------ health checks


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_gateway_healthcheck(health_server: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    healthcheck = _load_script("healthcheck")
    port = health_server.server_address[1]
    monkeypatch.setenv("RPG_PORT", str(port))
    assert healthcheck.main(["gateway", "--timeout", "2"]) == 0
    monkeypatch.setattr(_Health, "status", 503)
    assert healthcheck.main(["gateway", "--timeout", "2"]) == 1
    assert healthcheck.main(["gateway", "--url", f"http://127.0.0.1:{port}/nope"]) == 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert healthcheck.main(["gateway", "--url", f"http://127.0.0.1:{closed}/healthz"]) == 1


def test_worker_healthcheck_follows_the_heartbeat(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    from worker.queue.keys import WORKERS_KEY, worker_key
    from worker.runtime import Heartbeat

    healthcheck = _load_script("healthcheck")
    assert healthcheck.WORKERS_KEY == WORKERS_KEY
    assert worker_key("w") == healthcheck.WORKER_KEY_PREFIX + "w"
    monkeypatch.setenv("RPG_REDIS_URL", redis_url)
    assert healthcheck.main(["worker"]) == 1

    client = redis.Redis.from_url(redis_url)
    elsewhere = Heartbeat(
        client, Settings(redis_url=redis_url), "other.1", lambda: {"hostname": "other", "pid": 1}
    )
    elsewhere.beat()
    assert healthcheck.main(["worker"]) == 1  # a worker on another host does not count
    assert "1 live elsewhere" in capsys.readouterr().out

    here = Heartbeat(
        client,
        Settings(redis_url=redis_url),
        "here.2",
        lambda: {"hostname": socket.gethostname(), "pid": 2},
    )
    here.beat()
    assert healthcheck.main(["worker"]) == 0
    here.stop()  # a clean exit removes the heartbeat
    assert healthcheck.main(["worker"]) == 1
    client.close()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("RPG_REDIS_URL", f"redis://127.0.0.1:{closed}/0")
    assert healthcheck.main(["worker"]) == 1
    assert "Redis unreachable" in capsys.readouterr().out


# ------------------------------------------------------------------------------ settings docs


def test_settings_table_lists_every_setting() -> None:
    table_script = _load_script("settings_table")
    table = table_script.settings_table()
    for variable in SETTINGS_VARIABLES:
        assert f"| `{variable}` |" in table
    assert set(table_script.NOTES) <= set(Settings.model_fields)
    rows = table.splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    assert all(row.count(" | ") == 3 for row in rows), "a cell contains an unescaped '|'"
    port = next(row for row in rows if row.startswith("| `RPG_PORT` |"))
    assert f"`{Settings.model_fields['port'].default}`" in port


def test_settings_table_picks_fields() -> None:
    table_script = _load_script("settings_table")
    only = table_script.settings_table(only={"port", "host"}).splitlines()[2:]
    assert [row.split(" | ")[0] for row in only] == ["| `RPG_HOST`", "| `RPG_PORT`"]
    rest = table_script.settings_table(exclude={"port"})
    assert "`RPG_PORT`" not in rest and "`RPG_HOST`" in rest


def test_webhooks_healthcheck_follows_the_sender(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis
    from rq import SimpleWorker

    from worker.webhooks import WEBHOOK_QUEUE, webhook_queue

    healthcheck = _load_script("healthcheck")
    assert healthcheck.WEBHOOK_QUEUE == WEBHOOK_QUEUE
    monkeypatch.setenv("RPG_REDIS_URL", redis_url)
    assert healthcheck.main(["webhooks"]) == 1
    client = redis.Redis.from_url(redis_url)
    queue = webhook_queue(client)
    sender = SimpleWorker([queue], connection=client, serializer=queue.serializer)
    sender.register_birth()
    assert healthcheck.main(["webhooks"]) == 0
    assert sender.name in capsys.readouterr().out
    sender.register_death()
    assert healthcheck.main(["webhooks"]) == 1
    client.close()
