"""`rpg demo`: the whole service on one machine, end to end, in one command.

1. gets a generator bundle: ``--bundle PATH``, else ``<data-dir>/bundle`` if an earlier run
   trained it, else builds the digits-mlp zoo and trains one with `DEMO_TRAIN_CONFIG`;
2. starts an embedded Redis, a gateway (`rpg serve`) and a worker (`rpg worker`) as
   subprocesses, each in its own process group, and waits for ``/readyz``;
3. submits a request over HTTP with `service.client`, shows its progress, downloads the
   weights (sha256-checked), loads each into the architecture with ``strict=True`` and
   prints their test accuracy beside the zoo's.

Everything it started (gateway, worker, and Redis when it was not already running) is
stopped on the way out, also on Ctrl-C, SIGTERM or an error. Logs go to ``<data-dir>/logs``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from models.training import TrainConfig

__all__ = ["DEMO_TRAIN_CONFIG", "QUICK_TRAIN_CONFIG", "DemoError", "register", "run_demo"]

# The recipe of the demo's generator: the one place to tune it. The tiny preset with fewer
# steps than its default (1000) so that the demo trains in a few minutes on a laptop CPU;
# docs/benchmarks "Results" has the measured accuracy of both.
DEMO_TRAIN_CONFIG = TrainConfig(preset="tiny", steps=500)
# --quick: tiny dims and a few steps (tests, impatient users); its samples are near random.
QUICK_TRAIN_CONFIG = TrainConfig(
    preset="tiny",
    steps=30,
    d_model=32,
    d_state=16,
    channels=(1, 8, 16, 8, 1),
    lr=1e-3,
    diffusion_batch=64,
    batch_size=8,
)
ZOO_KIND: Final = "digits-mlp"
ZOO_CHECKPOINTS = 50
DEFAULT_DATA_DIR = Path("data/demo")
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
REPO_ROOT = Path(__file__).resolve().parents[1]


class DemoError(Exception):
    """The demo cannot go on; the message says what went wrong and where to look."""


def register(subparsers: Any) -> None:
    """Add ``demo`` to the `rpg` command."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole service locally and generate a few digit classifiers",
        description="Train (or reuse) a digits-mlp generator, start an embedded Redis, a "
        "gateway and a worker, generate weights over HTTP, and print their test accuracy "
        "beside the training zoo's. Stops everything it started when done.",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default: data/demo"
    )
    parser.add_argument("--bundle", type=Path, help="serve this generator bundle (no training)")
    parser.add_argument("--steps", type=int, help="training steps (default: the demo recipe's)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny generator, few steps: fast, poor accuracy"
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="train again even if a bundle exists"
    )
    parser.add_argument("-n", "--num-samples", type=int, default=5, help="models to generate")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (training and worker)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the job")
    parser.set_defaults(func=_main)


# ---------------------------------------------------------------------------- stages


class Stages:
    """Prints each stage as it starts and how long it took; keeps the timings."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, key: str, description: str) -> Iterator[None]:
        """Time the block as stage ``key``, announced as ``description``."""
        print(f"==> {description}", flush=True)
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.timings.append((key, seconds))
        print(f"    done in {seconds:.1f} s", flush=True)


def prepare_bundle(args: argparse.Namespace, data_dir: Path, stages: Stages) -> Path:
    """The bundle to serve: ``--bundle``, a reusable earlier one, or a freshly trained one."""
    if args.bundle is not None:
        bundle = args.bundle.expanduser().resolve()
        if not (bundle / "config.json").is_file():
            raise DemoError(f"--bundle {bundle}: no config.json there; pass a generator bundle")
        return bundle
    config = QUICK_TRAIN_CONFIG if args.quick else DEMO_TRAIN_CONFIG
    name = "bundle-quick" if args.quick else "bundle"
    if args.steps is not None:
        config = dataclasses.replace(config, steps=args.steps)
        name += f"-{args.steps}steps"
    bundle = data_dir / name
    if not args.rebuild and (bundle / "model.safetensors").is_file():
        print(f"==> reusing the generator in {bundle} (--rebuild trains it again)", flush=True)
        changed = _recipe_changes(bundle, config)
        if changed:
            print(f"    note: trained with other {', '.join(changed)} than the current recipe")
        return bundle
    from models.training import train
    from models.zoo.build import build_digits_zoo

    zoo = data_dir / "zoo" / ZOO_KIND
    if not (zoo / "zoo.json").is_file():
        with stages("zoo", f"build the {ZOO_KIND} zoo ({ZOO_CHECKPOINTS} checkpoints)"):
            build_digits_zoo(ZOO_KIND, zoo, num_checkpoints=ZOO_CHECKPOINTS, overwrite=True)
    # Train into a side directory: an interrupted run must not leave a bundle to reuse.
    staging = bundle.with_name(bundle.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with stages("train", f"train the generator ({config.steps} steps, preset {config.preset})"):
        train(zoo, staging, dataclasses.replace(config, device=args.device, name=ZOO_KIND))
    shutil.rmtree(bundle, ignore_errors=True)
    staging.rename(bundle)
    return bundle


def _recipe_changes(bundle: Path, config: TrainConfig) -> list[str]:
    """Recipe fields whose recorded value in ``bundle`` differs from ``config``."""
    try:
        recorded = json.loads((bundle / "config.json").read_text())["training"]["options"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, as saved
    keys = ("preset", "steps", "lr", "batch_size", "diffusion_batch", "d_model", "channels")
    return [key for key in keys if key in recorded and recorded[key] != wanted[key]]


# ---------------------------------------------------------------------------- processes


@dataclasses.dataclass
class Service:
    """A subprocess the demo started (leader of its own process group) and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 15) -> str:
        """The end of its log, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after a grace period."""
        pid = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(
                    f"    {self.name} did not stop in {STOP_TIMEOUT_S:g} s; killing it", flush=True
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                self.process.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # anything it spawned and left behind


def _spawn(name: str, args: list[str], log_dir: Path) -> Service:
    # A clean environment: a user's RPG_* settings (API keys, a remote Redis) would break it.
    env = {key: value for key, value in os.environ.items() if not key.startswith("RPG_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: no stray Ctrl-C, one killpg stops all
        )
    print(f"    {name} started (pid {process.pid}; log {log})", flush=True)
    return Service(name, process, log)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _embedded_redis_running(data_dir: Path) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from worker.redis_embedded import socket_path

    sock = socket_path(data_dir)
    if not sock.exists():
        return False
    client = redis.Redis(
        unix_socket_path=str(sock),
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _wait_ready(client: Any, services: list[Service], timeout: float) -> None:
    from service.client import ApiError, TransportError

    deadline = time.monotonic() + timeout
    reason = "no answer yet"
    while True:
        for service in services:
            code = service.process.poll()
            if code is not None:
                raise DemoError(
                    f"the {service.name} exited (code {code}) before the service was ready; "
                    f"its log {service.log} ends with:\n{service.log_tail()}"
                )
        try:
            client.ready()
            return
        except (ApiError, TransportError) as exc:
            reason = getattr(exc, "detail", str(exc))
        if time.monotonic() > deadline:
            raise DemoError(
                f"not ready after {timeout:g} s: {reason}; see the logs in {services[0].log.parent}"
            )
        time.sleep(0.2)


# ---------------------------------------------------------------------------- evaluation


def _zoo_accuracies(config: dict[str, Any], bundle: Path) -> list[float]:
    """The training zoo's recorded test accuracies (empty when the zoo is not on this disk)."""
    from models.zoo.store import ZooError, load_zoo

    recorded = (config.get("zoo") or {}).get("path")
    if not recorded:
        return []
    for candidate in (Path(recorded), bundle.parent / recorded, REPO_ROOT / recorded):
        if (candidate / "zoo.json").is_file():
            with contextlib.suppress(ZooError, OSError):
                return [float(a) for a in load_zoo(candidate).accuracies() if a is not None]
    return []


def _evaluate(
    paths: list[Path], architecture: dict[str, Any], dataset: dict[str, Any]
) -> list[float]:
    """Test accuracy of each downloaded state dict, loaded strictly into a fresh module."""
    from safetensors.torch import load_file

    from models.zoo.digits import accuracy, split_from_spec
    from models.zoo.store import build_module

    split = split_from_spec(dataset)
    scores = []
    for path in paths:
        module = build_module(architecture)
        module.load_state_dict(load_file(path, device="cpu"), strict=True)
        scores.append(accuracy(module, split.x_test, split.y_test))
    return scores


def _print_table(
    paths: list[Path], scores: list[float], zoo: list[float], zoo_mean: float | None
) -> None:
    print(f"\n{'model':<28}{'test accuracy':>14}")
    for path, score in zip(paths, scores, strict=True):
        print(f"{path.name:<28}{score:>14.2%}")
    print(f"\n{'':<22}{'N':>5}{'mean':>9}{'min':>9}{'max':>9}")
    print(
        f"{'generated':<22}{len(scores):>5}{sum(scores) / len(scores):>9.2%}"
        f"{min(scores):>9.2%}{max(scores):>9.2%}"
    )
    if zoo:
        print(
            f"{'training zoo':<22}{len(zoo):>5}{sum(zoo) / len(zoo):>9.2%}{min(zoo):>9.2%}{max(zoo):>9.2%}"
        )
    elif zoo_mean is not None:
        print(f"{'training zoo (recorded)':<22}{'?':>5}{zoo_mean:>9.2%}{'?':>9}{'?':>9}")


# ---------------------------------------------------------------------------- the demo


def run_demo(args: argparse.Namespace) -> list[float]:
    """Run the demo as `rpg demo` does; returns the generated models' test accuracies."""
    from service.client import Client
    from worker.redis_embedded import ensure_embedded_redis

    started_at = time.perf_counter()
    stages = Stages()
    data_dir = args.data_dir.expanduser().resolve()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    bundle = prepare_bundle(args, data_dir, stages)
    config = json.loads((bundle / "config.json").read_text())
    services: list[Service] = []
    started_redis = False
    client: Client | None = None
    job: dict[str, Any] | None = None
    try:
        with stages("redis", "start the embedded Redis"):
            started_redis = not _embedded_redis_running(data_dir)
            redis_url = ensure_embedded_redis(data_dir)
            pid = (data_dir / "redis" / "redis.pid").read_text().strip()
            print(
                f"    redis {'started' if started_redis else 'already running'} (pid {pid}; {redis_url})"
            )
        with stages("start", "start the gateway and a worker"):
            port = _free_port()
            common = ["--redis-url", redis_url, "--generators", str(bundle)]
            common += ["--data-dir", str(data_dir)]
            serve = f"serve --host 127.0.0.1 --port {port} --log-level warning".split()
            services.append(_spawn("gateway", [*serve, *common], data_dir / "logs"))
            work = ["worker", "--device", args.device, "--name", f"demo-{os.getpid()}"]
            services.append(_spawn("worker", [*work, *common], data_dir / "logs"))
            client = Client(f"http://127.0.0.1:{port}")
            _wait_ready(client, services, READY_TIMEOUT_S)
        served = {a["name"]: a for a in client.architectures()}
        arch = served.get(config.get("name")) or next(iter(served.values()))
        if (arch.get("condition") or {}).get("kind", "none") != "none":
            raise DemoError(
                f"generator {arch['name']!r} is conditional; the demo needs an unconditional one"
            )
        defaults = arch.get("defaults") or {}  # the bundle's, from the preset table
        with stages(
            "generate",
            f"generate {args.num_samples} x {arch['name']} ({defaults.get('sampler')}, "
            f"{defaults.get('steps')} steps, seed {args.seed})",
        ):
            job = client.submit(arch["name"], num_samples=args.num_samples, seed=args.seed)
            print(f"    job {job['id']}", flush=True)
            job = client.wait(job, progress=True, timeout=args.timeout, poll_interval=0.2)
        with stages("download", "download the weights (sha256-checked)"):
            paths = client.download(job, data_dir / "outputs" / job["id"])
            print(f"    {len(paths)} files in {paths[0].parent}")
        with stages(
            "evaluate", "load them into the architecture, evaluate on the digits test split"
        ):
            scores = _evaluate(
                paths, arch["architecture"], arch.get("dataset") or config["dataset"]
            )
    finally:
        stopping = time.perf_counter()
        _shutdown(client, job, services, data_dir if started_redis else None)
        stages.timings.append(("stop", time.perf_counter() - stopping))
    zoo_mean = (config.get("zoo") or {}).get("accuracy_mean")
    _print_table(paths, scores, _zoo_accuracies(config, bundle), zoo_mean)
    if args.quick and args.bundle is None:
        print(
            "\nnote: --quick trains a tiny generator for a few steps; expect poor accuracy. "
            "Run `rpg demo` without --quick for the real thing."
        )
    timings = ", ".join(f"{key} {seconds:.1f} s" for key, seconds in stages.timings)
    print(f"\ntimings: {timings}; total {time.perf_counter() - started_at:.1f} s")
    return scores


def _shutdown(
    client: Any, job: dict[str, Any] | None, services: list[Service], redis_dir: Path | None
) -> None:
    """Stop what the demo started (Redis only when ``redis_dir``); a second Ctrl-C must not
    cut this short."""
    from worker.redis_embedded import stop_embedded_redis

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        if (
            client is not None
            and job is not None
            and job.get("status") not in ("succeeded", "failed", "canceled")
        ):
            with contextlib.suppress(Exception):  # best effort: lets the worker stop between chunks
                client.cancel(job)
        print(
            "==> stopping the worker, the gateway" + (" and Redis" if redis_dir else ""), flush=True
        )
        for service in reversed(services):
            service.stop()
        if client is not None:
            client.close()
        if redis_dir is not None:
            stop_embedded_redis(redis_dir)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main(args: argparse.Namespace) -> int:
    from service.client import ClientError

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through run_demo's cleanup

    saved = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        run_demo(args)
    except KeyboardInterrupt:
        print("\nrpg demo: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    except (DemoError, ClientError) as exc:
        print(f"rpg demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return 0
