"""Workflows for the orchestration tests (events, children, continue-as-new, cancel, patched)."""

from __future__ import annotations
