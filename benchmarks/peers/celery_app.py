"""The Celery app of the Celery-chain benchmark (benchmarks/peers/celery_bench.py).

A workflow is a chain of K ``bench.step`` no-op tasks. Each task hands the next one,
through the chain's message, the time it finished and the hand-off gaps seen so far
(the moment a task starts minus the moment the previous one finished), so nothing is
written anywhere per step; the last task records its chain in Redis in one pipeline:
one ``INCR`` of the completion counter, the finish time and the gaps. The first task
of each chain records the first start with ``SET NX``. No result backend: results are
not stored, which is the cheapest way to run chains. The fan-out variant is a chord
(a group of K ``bench.fan_step`` no-ops, then ``bench.fan_done``), which needs a result
backend: Redis, the same database as the broker.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

BROKER_URL = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/7")
QUEUE = "bench"
DONE_KEY = "bench:done"
FIRST_START_KEY = "bench:first_start"
ENDS_KEY = "bench:ends"
GAPS_KEY = "bench:gaps"
STARTS_KEY = "bench:starts"

app = Celery("celery_bench", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    result_backend=os.environ.get("BENCH_CELERY_BACKEND") or None,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_redis: redis.Redis | None = None


def bench_redis() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER_URL)
    return _redis


@app.task(name="bench.step")
def step(carry: dict[str, Any] | None, last: bool = False) -> dict[str, Any]:
    started = time.time()
    if carry is None:  # the chain's first task
        bench_redis().set(FIRST_START_KEY, repr(started), nx=True)
        gaps: list[float] = []
    else:
        gaps = [*carry["gaps"], started - carry["t"]]
    if last:
        finished = time.time()
        pipe = bench_redis().pipeline(transaction=False)
        pipe.rpush(ENDS_KEY, repr(finished))
        if gaps:
            pipe.rpush(GAPS_KEY, json.dumps(gaps))
        pipe.incr(DONE_KEY)
        pipe.execute()
    return {"t": time.time(), "gaps": gaps}


@app.task(name="bench.fan_step", ignore_result=False)  # a chord's header results are stored
def fan_step() -> float:
    return time.time()


@app.task(name="bench.fan_done")
def fan_done(started: list[float]) -> None:
    """The chord's body: runs once all K no-ops of one workflow have finished."""
    pipe = bench_redis().pipeline(transaction=False)
    pipe.rpush(ENDS_KEY, repr(time.time()))
    pipe.rpush(STARTS_KEY, json.dumps(started))
    pipe.incr(DONE_KEY)
    pipe.execute()
