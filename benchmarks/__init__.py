"""Throughput and latency harness for django-durable (not a test): see run.py."""
