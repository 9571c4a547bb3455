"""The reference point of `service.bench.stack`: the least a FastAPI + pydantic + redis-py app
can do for ``POST /generate`` (parse the body, write one job hash, push one list entry).

    RPG_BENCH_REDIS_URL=redis://... uvicorn service.bench.minimal:app
"""

from __future__ import annotations

import os
import time
import uuid

import redis
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

__all__ = ["app"]


class Body(BaseModel):
    """The same fields a client sends our gateway."""

    model_config = ConfigDict(extra="forbid")

    architecture: str
    num_samples: int = 1
    seed: int | None = None


app = FastAPI()
_redis = redis.Redis.from_url(os.environ.get("RPG_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.post("/generate", status_code=202)
def generate(body: Body) -> dict[str, object]:
    """Write the job and queue its id."""
    job_id = uuid.uuid4().hex
    _redis.hset(
        f"bench:job:{job_id}", mapping={"request": body.model_dump_json(), "t": time.time()}
    )
    _redis.rpush("bench:queue", job_id)
    return {"id": job_id, "status": "queued"}
