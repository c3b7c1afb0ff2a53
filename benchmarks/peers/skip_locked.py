#!/usr/bin/env python3
"""The raw ``FOR UPDATE SKIP LOCKED`` queue limit on PostgreSQL (psycopg 3) or MariaDB (MySQLdb).

    python benchmarks/peers/skip_locked.py --processes 4 --batch 1 --items 10000
    python benchmarks/peers/skip_locked.py --processes 4 --batch 32 --items 100000
    python benchmarks/peers/skip_locked.py --db mariadb --processes 4 --batch 1 --items 10000

The ceiling any engine that claims work from that database lives under. What one run does:

1. Drops and creates the database ``skiplocked_bench`` (same server as the benchmarks)
   with one table, ``queue_item`` (id, state, owner, claim and completion times; on
   PostgreSQL a partial index on the claimable rows, on MariaDB, which has none, an index
   on (state, id)), and inserts M items.
2. Starts P processes that each open one connection and, once all are connected, loop:
   claim up to B items in one transaction, then complete them in another (``UPDATE ...
   SET state = 2 WHERE id IN (...) AND owner = me``, fenced on the owner as a real engine
   must). A process stops when a claim returns nothing. PostgreSQL claims in one
   statement (``UPDATE ... WHERE id IN (SELECT id ... WHERE state = 0 ORDER BY id LIMIT B
   FOR UPDATE SKIP LOCKED) RETURNING id``); MariaDB has neither UPDATE ... RETURNING nor
   an UPDATE whose subquery reads its own table, so its claim is a transaction of a
   locking read and an update (``BEGIN; SELECT id ... FOR UPDATE SKIP LOCKED; UPDATE ...
   WHERE id IN (...); COMMIT``), under READ COMMITTED as django-durable's connections.
3. Reports items/s from the moment all processes are released to the moment the last
   one finds the queue empty, and CPU per item of the processes, the database server
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
    mariadb_connect,
    mariadb_fresh_database,
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

MARIADB_SCHEMA = """
CREATE TABLE queue_item (
    id bigint AUTO_INCREMENT PRIMARY KEY,
    state smallint NOT NULL DEFAULT 0,
    owner integer,
    payload json NOT NULL,
    claimed_at datetime(6),
    done_at datetime(6),
    KEY queue_item_claimable (state, id)
) ENGINE=InnoDB
"""

MARIADB_CLAIM_LOCK = "SELECT id FROM queue_item WHERE state = 0 ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
MARIADB_CLAIM_MARK = "UPDATE queue_item SET state = 1, owner = %s, claimed_at = UTC_TIMESTAMP(6) WHERE id IN %s"
MARIADB_COMPLETE = "UPDATE queue_item SET state = 2, done_at = UTC_TIMESTAMP(6) WHERE id IN %s AND owner = %s"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["postgres", "mariadb"], default="postgres")
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


def consume_mariadb(db_name: str, owner: int, batch: int, ready: Any, go: Any, counts: Any) -> None:
    done = 0
    transactions = 0
    conn = mariadb_connect(db_name)
    try:
        cursor = conn.cursor()
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        ready.release()
        go.wait()
        while True:
            cursor.execute("BEGIN")
            cursor.execute(MARIADB_CLAIM_LOCK, [batch])
            ids = tuple(row[0] for row in cursor.fetchall())
            if ids:
                cursor.execute(MARIADB_CLAIM_MARK, [owner, ids])
            conn.commit()
            transactions += 1
            if not ids:
                break
            cursor.execute(MARIADB_COMPLETE, [ids, owner])
            completed = cursor.rowcount
            transactions += 1
            if completed != len(ids):
                raise RuntimeError(f"completed {completed} of {len(ids)} claimed items")
            done += completed
    finally:
        conn.close()
    counts[owner] = (done, transactions, time.monotonic())


def reaped_children_cpu_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


def prepare_postgres(args: argparse.Namespace) -> str:
    import psycopg

    fresh_pg_database(args.db_name)
    db_url = pg_url(args.db_name)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO queue_item (payload) SELECT jsonb_build_object('n', n) FROM generate_series(1, %s) AS n",
            [args.items],
        )
        conn.execute("VACUUM ANALYZE queue_item")
    return f"psycopg {psycopg.__version__}"


def prepare_mariadb(args: argparse.Namespace) -> str:
    from importlib.metadata import version

    mariadb_fresh_database(args.db_name)
    conn = mariadb_connect(args.db_name)
    try:
        cursor = conn.cursor()
        cursor.execute(MARIADB_SCHEMA)
        # seq_1_to_N: MariaDB's Sequence engine, a table of the numbers 1..N.
        cursor.execute(f"INSERT INTO queue_item (payload) SELECT JSON_OBJECT('n', seq) FROM seq_1_to_{int(args.items)}")
        cursor.execute("ANALYZE TABLE queue_item")
        cursor.fetchall()
        cursor.execute("SELECT VERSION()")
        (server,) = cursor.fetchone()
    finally:
        conn.close()
    return f"mysqlclient {version('mysqlclient')}, MariaDB {server}, READ COMMITTED"


def left_over(args: argparse.Namespace) -> int:
    query = "SELECT count(*) FROM queue_item WHERE state <> 2"
    if args.db == "mariadb":
        conn = mariadb_connect(args.db_name)
        try:
            cursor = conn.cursor()
            cursor.execute(query)
            return int(cursor.fetchone()[0])
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(pg_url(args.db_name), autocommit=True) as conn:
        return int(conn.execute(query).fetchone()[0])


def drop(args: argparse.Namespace) -> None:
    if args.db == "mariadb":
        mariadb_fresh_database(args.db_name, create=False)
    else:
        drop_pg_database(args.db_name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        driver = prepare_mariadb(args) if args.db == "mariadb" else prepare_postgres(args)
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Semaphore(0)
        go = ctx.Event()
        counts = ctx.Manager().dict()
        if args.db == "mariadb":
            target, where = consume_mariadb, args.db_name
        else:
            target, where = consume, pg_url(args.db_name)
        procs = [
            ctx.Process(target=target, args=(where, i, args.batch, ready, go, counts)) for i in range(args.processes)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.acquire()
        # The consumers are reaped by join() before the last snapshot: their CPU is this
        # process's children's time (the Manager process, still alive, is not in it).
        window = CpuWindow([], server=args.db)
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
        left = left_over(args)
    finally:
        if not args.keep_db:
            drop(args)
    claim = (
        "BEGIN; SELECT id ... ORDER BY id LIMIT B FOR UPDATE SKIP LOCKED; UPDATE ... WHERE id IN (...); COMMIT"
        if args.db == "mariadb"
        else "UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING id"
    )
    return {
        "system": "skip_locked" if args.db == "postgres" else f"skip_locked_{args.db}",
        "config": {
            "db": args.db,
            "processes": args.processes,
            "batch": args.batch,
            "items": args.items,
            "database": args.db_name,
        },
        "how": (
            f"{args.db}, {driver}, {args.processes} processes, one connection each, autocommit: "
            f"claim up to {args.batch} item(s) per transaction with {claim}, complete them in a second "
            f"transaction fenced on the owner; {args.items} items preloaded, timed from releasing the "
            "processes to the last empty claim"
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
        f"SKIP LOCKED on {args.db}, {args.processes} processes, batch {args.batch}: {result['items_per_s']} items/s "
        f"({result['items_done']} items in {result['elapsed_s']} s, {result['items_left']} left), "
        f"CPU per item {result['cpu_per_item_ms']}"
    )
    return 0 if result["items_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
