"""Cancel latency and progress granularity by sampler, through a real `rpg worker`.

    python -m worker.bench.cancel BUNDLE [--samples 8] [--after 1.0]

Starts `rpg worker` (one torch thread, settings from RPG_* otherwise) on an embedded Redis in
a temporary directory; for each sampler it queues one job of ``--samples`` models, lets it run
``--after`` seconds past its first progress, cancels it, and prints the seconds from the
cancel to the job's "canceled" status, with how many distinct progress values a 20 ms poll saw
while it ran (they must only grow).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

from models.bundle import read_config
from models.sampler_names import SamplerName
from worker.bench.latency import local_worker
from worker.queue import JobRequest, cancel, enqueue, get_job
from worker.settings import Settings

__all__ = ["main"]

# (sampler, steps): steps that make each job run well past the cancel
RUNS: tuple[tuple[SamplerName, int], ...] = (("ddim", 200), ("dpm-solver++", 200), ("ddpm", 1000))
POLL_S = 0.02


def _status(connection: object, job_id: str, settings: Settings) -> tuple[str, float]:
    view = get_job(connection, job_id, settings=settings)  # type: ignore[arg-type]
    assert view is not None
    return view.status.value, view.progress


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per sampler."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--after", type=float, default=1.0, help="seconds of running before cancel")
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="rpg-cancel-"))
    name = read_config(args.bundle)["name"]
    with local_worker(args.bundle, data, max_steps=1000) as (connection, settings, _):
        for sampler, steps in RUNS:
            request = JobRequest(
                architecture=name, seed=1, sampler=sampler, steps=steps, num_samples=args.samples
            )
            job_id = enqueue(connection, request, settings=settings)
            seen: list[float] = []
            while True:
                status, progress = _status(connection, job_id, settings)
                if progress > 0 and (not seen or progress != seen[-1]):
                    seen.append(progress)
                if status == "running" and progress > 0:
                    break
                time.sleep(POLL_S)
            run_until = time.monotonic() + args.after
            while time.monotonic() < run_until:
                _, progress = _status(connection, job_id, settings)
                if progress != seen[-1]:
                    seen.append(progress)
                time.sleep(POLL_S)
            asked = time.monotonic()
            cancel(connection, job_id, settings=settings)
            while (status := _status(connection, job_id, settings)[0]) == "running":
                time.sleep(POLL_S)
            latency = time.monotonic() - asked
            monotone = all(b > a for a, b in itertools.pairwise(seen))
            print(
                f"{sampler}-{steps} x {args.samples}: {status} {latency:.2f} s after the cancel; "
                f"{len(seen)} progress values in {args.after:.1f} s of running, last "
                f"{seen[-1]:.4f}, {'only rising' if monotone else 'NOT MONOTONE'}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
