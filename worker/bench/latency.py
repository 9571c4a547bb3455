"""Latency breakdown of small jobs through a real `rpg worker` on the embedded Redis.

    python -m worker.bench.latency BUNDLE [--data-dir DIR] [--jobs 3] [--steps 50]

Starts `rpg worker` as a subprocess (one torch thread), waits until it heart-beats, then
enqueues one job at a time and prints the worker's own timings (queue wait, generator load,
sampling, writing + hashing, upload, total) beside the wall time the client saw (enqueue ->
done, polling every 5 ms), and the share of that wall time that is not sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from redis import Redis

from models.bundle import read_config
from worker.queue import JobRequest, connect, enqueue, get_job, live_workers
from worker.redis_embedded import stop_embedded_redis
from worker.settings import Settings


@contextmanager
def local_worker(
    bundle: Path, data: Path, **settings: Any
) -> Iterator[tuple[Redis, Settings, float]]:
    """`rpg worker` (CPU, one torch thread unless RPG_WORKER_CPU_THREADS says otherwise)
    serving `bundle` on the embedded Redis under `data`: yields (client, settings, seconds
    until its first heartbeat); stops the worker and the embedded Redis afterwards."""
    env = {**os.environ, "RPG_DATA_DIR": str(data), "RPG_GENERATORS": str(bundle)}
    env.setdefault("RPG_WORKER_CPU_THREADS", "1")
    env.pop("RPG_REDIS_URL", None)
    config = Settings(data_dir=data, redis_url=None, **settings)
    connection = connect(config)
    started = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--device", "cpu"], env=env
    )
    try:
        while not live_workers(connection, settings=config):
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}")
            time.sleep(0.02)
        yield connection, config, time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(30)
        stop_embedded_redis(data)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per job."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data-dir", type=Path, help="default: a fresh temporary directory")
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per job")
    args = parser.parse_args(argv)
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="rpg-latency-"))
    name = read_config(args.bundle)["name"]
    with local_worker(args.bundle, data) as (connection, settings, ready_s):
        print(f"worker start -> ready (imports, generator load): {ready_s:.2f} s")
        for index in range(args.jobs):
            request = JobRequest(architecture=name, seed=index, sampler="ddim", steps=args.steps)
            begin = time.perf_counter()
            job_id = enqueue(connection, request, settings=settings)
            while True:
                view = get_job(connection, job_id, settings=settings)
                if view is not None and view.status.value not in ("queued", "running"):
                    break
                time.sleep(0.005)
            wall = time.perf_counter() - begin
            timings = (view.result or {}).get("timings") or {}
            sampling = float(timings.get("sample_s", 0.0))
            overhead = wall - sampling
            print(
                f"job {index}: {view.status.value}, client wall {wall:.3f} s, sampling "
                f"{sampling:.3f} s, everything else {overhead:.3f} s "
                f"({100 * overhead / wall:.1f}% of the wall time); worker timings "
                f"{json.dumps(timings)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
