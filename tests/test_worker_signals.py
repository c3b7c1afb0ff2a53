"""``durable_worker``'s signal handling, in-process: the handler runs between two bytecodes of
the main thread, whatever that thread holds."""

from __future__ import annotations

import signal
import threading

import pytest

from django_durable.worker import Worker

pytestmark = pytest.mark.database  # builds a Worker (its executor from the settings); no query


def test_a_signal_while_the_loop_holds_its_wakeup_lock_still_stops_the_worker() -> None:
    """The main loop waits on and clears an Event many times a second, holding its lock for a
    moment each time; a SIGTERM handled then must not wait for that lock (its own thread holds
    it: it would wait forever, and the worker never stop)."""
    worker = Worker(queues=["default"], concurrency=1, name="signals")
    handled = threading.Event()

    def main_loop_moment() -> None:
        with worker._wakeup._cond:  # as Event.wait() and Event.clear() hold it, briefly
            worker._handle_signal(signal.SIGTERM, None)
        handled.set()

    threading.Thread(target=main_loop_moment, daemon=True).start()
    assert handled.wait(10), "the signal handler waited for a lock its own thread held"
    assert worker._stopping.wait(10)
    assert worker._wakeup.is_set()
