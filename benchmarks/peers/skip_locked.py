#!/usr/bin/env python3
"""The raw PostgreSQL ``FOR UPDATE SKIP LOCKED`` queue limit, in Python with psycopg 3.

    python benchmarks/peers/skip_locked.py --processes 4 --batch 1 --items 10000
    python benchmarks/peers/skip_locked.py --processes 4 --batch 32 --items 100000

The ceiling any engine that claims work from PostgreSQL lives under. What one run does:

1. Drops and creates the database ``skiplocked_bench`` (same server) with one table,
   ``queue_item`` (bigserial id, state, owner, claim and completion times; a partial
   index on the claimable rows), and inserts M items.
2. Starts P processes that each open one connection and, once all are connected, loop:
   claim up to B items in one transaction (``UPDATE ... WHERE id IN (SELECT id ...
   WHERE state = 0 ORDER BY id LIMIT B FOR UPDATE SKIP LOCKED) RETURNING id``), then
   complete them in another (``UPDATE ... SET state = 2 WHERE id = ANY(...) AND owner =
   me``, fenced on the owner as a real engine must). A process stops when a claim
   returns nothing.
3. Reports items/s from the moment all processes are released to the moment the last
   one finds the queue empty, and CPU per item of the processes, the PostgreSQL server
   and the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers.common import (
    CpuWindow,
    drop_pg_database,
    fresh_pg_database,
    pg_url,
    write_json,
)

SCHEMA = """
CREATE TABLE queue_item (
    id bigserial PRIMARY KEY,
    state smallint NOT NULL DEFAULT 0,
    owner integer,
    payload jsonb NOT NULL DEFAULT '{}',
    claimed_at timestamptz,
    done_at timestamptz
);
CREATE INDEX queue_item_claimable ON queue_item (id) WHERE state = 0;
"""

CLAIM = """
UPDATE queue_item SET state = 1, owner = %(owner)s, claimed_at = now()
WHERE id IN (
    SELECT id FROM queue_item WHERE state = 0 ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED
)
RETURNING id
"""

COMPLETE = """
UPDATE queue_item SET state = 2, done_at = now() WHERE id = ANY(%(ids)s) AND owner = %(owner)s
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", "-p", type=int, default=4)
    p.add_argument("--batch", "-b", type=int, default=1, help="items claimed per transaction")
    p.add_argument("--items", "-m", type=int, default=10000)
    p.add_argument("--db-name", default="skiplocked_bench")
    p.add_argument("--keep-db", action="store_true")
    p.add_argument("--json", default=None)
    return p.parse_args()


def consume(db_url: str, owner: int, batch: int, ready: Any, go: Any, counts: Any) -> None:
    import psycopg

    done = 0
    transactions = 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT 1")
        ready.release()
        go.wait()
        while True:
            ids = [row[0] for row in conn.execute(CLAIM, {"owner": owner, "batch": batch})]
            transactions += 1
            if not ids:
                break
            completed = conn.execute(COMPLETE, {"ids": ids, "owner": owner}).rowcount
            transactions += 1
            if completed != len(ids):
                raise RuntimeError(f"completed {completed} of {len(ids)} claimed items")
            done += completed
    counts[owner] = (done, transactions, time.monotonic())


def reaped_children_cpu_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    fresh_pg_database(args.db_name)
    db_url = pg_url(args.db_name)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute(
                "INSERT INTO queue_item (payload) SELECT jsonb_build_object('n', n) FROM generate_series(1, %s) AS n",
                [args.items],
            )
            conn.execute("VACUUM ANALYZE queue_item")
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Semaphore(0)
        go = ctx.Event()
        counts = ctx.Manager().dict()
        procs = [
            ctx.Process(target=consume, args=(db_url, i, args.batch, ready, go, counts)) for i in range(args.processes)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.acquire()
        # The consumers are reaped by join() before the last snapshot: their CPU is this
        # process's children's time (the Manager process, still alive, is not in it).
        window = CpuWindow([])
        before = {**window.snapshot(), "workers": reaped_children_cpu_seconds()}
        t0 = time.monotonic()
        go.set()
        for proc in procs:
            proc.join()
        after = {**window.snapshot(), "workers": reaped_children_cpu_seconds()}
        if any(proc.exitcode != 0 for proc in procs):
            raise RuntimeError(f"a consumer failed: exit codes {[p.exitcode for p in procs]}")
        done = sum(c[0] for c in counts.values())
        transactions = sum(c[1] for c in counts.values())
        elapsed = max(c[2] for c in counts.values()) - t0
        with psycopg.connect(db_url, autocommit=True) as conn:
            left = conn.execute("SELECT count(*) FROM queue_item WHERE state <> 2").fetchone()[0]
    finally:
        if not args.keep_db:
            drop_pg_database(args.db_name)
    return {
        "system": "skip_locked",
        "config": {
            "processes": args.processes,
            "batch": args.batch,
            "items": args.items,
            "database": args.db_name,
        },
        "how": (
            f"psycopg {psycopg.__version__}, {args.processes} processes, one connection each, autocommit: "
            f"claim up to {args.batch} item(s) per transaction with UPDATE ... WHERE id IN (SELECT ... "
            "FOR UPDATE SKIP LOCKED) RETURNING id, complete them in a second transaction fenced on the "
            f"owner; {args.items} items preloaded, timed from releasing the processes to the last empty claim"
        ),
        "items_done": done,
        "items_left": left,
        "elapsed_s": round(elapsed, 3),
        "items_per_s": round(done / elapsed, 1) if elapsed else None,
        "transactions": transactions,
        "transactions_per_s": round(transactions / elapsed, 1) if elapsed else None,
        "cpu_per_item_ms": CpuWindow.per_unit_ms(before, after, done),
    }


def main() -> int:
    args = parse_args()
    result = run(args)
    if args.json:
        write_json(args.json, result)
    print(
        f"SKIP LOCKED, {args.processes} processes, batch {args.batch}: {result['items_per_s']} items/s "
        f"({result['items_done']} items in {result['elapsed_s']} s, {result['items_left']} left), "
        f"CPU per item {result['cpu_per_item_ms']}"
    )
    return 0 if result["items_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
