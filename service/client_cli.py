"""`rpg submit`: queue a generation request on a gateway over HTTP (and wait, and download).

Prints the job id on stdout. With ``--wait`` it shows progress on stderr until the job ends;
with ``--out DIR`` it also downloads the weights (hash-checked) and prints their paths.
Exit codes: 0 done, 1 the job failed / was canceled / timed out, 2 bad arguments or an API
error, 130 interrupted (the job keeps running on the server).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from models.sampler_names import SAMPLERS

__all__ = ["register"]

API_KEY_ENV = "RPG_API_KEY"


def register(subparsers: Any) -> None:
    """Add ``submit`` to the `rpg` command."""
    parser = subparsers.add_parser(
        "submit",
        help="submit a generation request to a running gateway",
        description="Queue a request on a gateway (`rpg serve`) and print the job id. "
        "--wait shows progress until the job ends; --out DIR also downloads the weights.",
    )
    parser.add_argument("--url", required=True, help="gateway base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--api-key", help=f"API key (default: the {API_KEY_ENV} environment variable)"
    )
    parser.add_argument(
        "--architecture", required=True, help="generator name (GET /architectures lists them)"
    )
    task = parser.add_mutually_exclusive_group()
    task.add_argument(
        "--task-embedding",
        type=_embedding,
        metavar="JSON",
        help="condition vector as a JSON list, e.g. '[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]'",
    )
    task.add_argument(
        "--positive-classes",
        type=_classes,
        metavar="LABELS",
        help="binary task by its positive class labels, comma-separated, e.g. 0,3,5",
    )
    parser.add_argument(
        "-n", "--num-samples", type=int, default=1, help="weight sets to generate (default 1)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: a random one)")
    parser.add_argument("--sampler", choices=SAMPLERS, help="default: the generator's")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the generator's)")
    parser.add_argument("--eta", type=float, help="DDIM eta, 0..1 (default 0: deterministic)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="output dtype")
    parser.add_argument(
        "--idempotency-key", help="resending with the same key returns the same job"
    )
    parser.add_argument("--wait", action="store_true", help="wait for the job, showing progress")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="download the weights here (implies --wait)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)"
    )
    parser.set_defaults(func=_submit)


def _embedding(text: str) -> list[float]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); pass e.g. '[1, 0, 0.5]'") from None
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise argparse.ArgumentTypeError("must be a JSON list of numbers, e.g. '[1, 0, 0.5]'")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError("must contain only finite numbers")
    return [float(v) for v in values]


def _classes(text: str) -> list[str]:
    labels = [item.strip() for item in text.split(",") if item.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("name at least one class label, e.g. 0,3,5")
    return labels


def _submit(args: argparse.Namespace) -> int:
    from service.client import ApiError, Client, ClientError, JobError, WaitTimeout

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    with Client(args.url, api_key=api_key) as client:
        try:
            job = client.submit(
                args.architecture,
                task_embedding=args.task_embedding,
                task=args.positive_classes,
                num_samples=args.num_samples,
                seed=args.seed,
                sampler=args.sampler,
                steps=args.steps,
                eta=args.eta,
                dtype=args.dtype,
                idempotency_key=args.idempotency_key,
            )
        except ClientError as exc:
            print(f"rpg submit: {exc}", file=sys.stderr)
            return 2
        print(job["id"], flush=True)
        if not (args.wait or args.out):
            return 0
        try:
            job = client.wait(job, progress=True, timeout=args.timeout)
            seed = (job.get("result") or {}).get("seed")
            print(f"job {job['id']} succeeded (seed {seed})", file=sys.stderr)
            if args.out:
                for path in client.download(job, args.out):
                    print(path, flush=True)
        except (JobError, WaitTimeout) as exc:
            print(f"rpg submit: {exc}", file=sys.stderr)
            return 1
        except ApiError as exc:
            print(f"rpg submit: {exc}", file=sys.stderr)
            return 2
        except ClientError as exc:
            print(f"rpg submit: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(
                f"\nrpg submit: interrupted; job {job['id']} keeps running on the server "
                f"(poll {args.url.rstrip('/')}/jobs/{job['id']})",
                file=sys.stderr,
            )
            return 130
    return 0
