"""Peer benchmarks run by benchmarks/compare.py: DBOS Transact, Celery chains, a bare SKIP LOCKED queue."""
