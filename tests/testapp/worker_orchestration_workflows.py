"""Workflows for the orchestration tests that run on real worker processes."""

from __future__ import annotations
