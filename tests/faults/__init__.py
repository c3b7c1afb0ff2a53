"""Fault tests: workers killed, paused and skewed, connections and servers dropped, crash points,
and the checker (``invariants``) that judges what survived. ``kit`` holds what they share."""
