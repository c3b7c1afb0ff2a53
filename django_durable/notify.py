"""Wake-ups without polling delay on PostgreSQL: ``LISTEN``/``NOTIFY``.

Senders call ``notify_work(queue)`` or ``notify_closed(run_id)`` *inside* the
transaction that makes work claimable or closes a run. PostgreSQL delivers a
notification when that transaction commits and drops it when it rolls back, so a
waiter is never woken for a change it cannot see yet. Identical notifications
(same channel and payload) in one transaction are delivered once.

Waiters hold a ``Listener``. A notification is a hint, never the truth: on other
databases, and whenever a notification may have been missed (the listening
connection was lost), ``wait()`` returns ``[]`` and the caller re-reads the
database, as it also does at least every poll interval. To miss nothing, LISTEN
*before* checking the database; the ``Listener`` starts listening in its
constructor, so::

    listener = Listener([CLOSED_CHANNEL])   # 1. LISTEN
    try:
        while not run_is_closed():          # 2. check the database
            listener.wait(poll_interval)    # 3. anything committed after 1. ends this at once
    finally:
        listener.close()

A change committed between 1. and 2. is seen by 2.; one committed after 2. wakes 3.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from django.db import connections

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("django_durable.notify")

WORK_CHANNEL = "django_durable_work"  # payload: the queue name
CLOSED_CHANNEL = "django_durable_closed"  # payload: the run_id of a run that closed

# Reconnection backoff of a Listener whose connection failed or was lost.
RECONNECT_INITIAL = 0.1
RECONNECT_MAXIMUM = 5.0


def supported(using: str = "default") -> bool:
    """Whether ``using`` is PostgreSQL through psycopg 3 (Django's "postgresql" backend)."""
    from .store.dialects import dialect_for  # the store imports this module: at the top, a cycle

    return dialect_for(connections[using]).has_listen_notify


def notify_work(queue: str, *, using: str = "default") -> None:
    """Tell listening workers that work on ``queue`` becomes claimable when the current
    transaction commits. No query at all where LISTEN/NOTIFY is not supported."""
    _notify(WORK_CHANNEL, queue, using)


def notify_closed(run_id: str, *, using: str = "default") -> None:
    """Tell waiters that run ``run_id`` is closed once the current transaction commits."""
    _notify(CLOSED_CHANNEL, str(run_id), using)


def _notify(channel: str, payload: str, using: str) -> None:
    if not supported(using):
        return
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


class Listener:
    """Receives notifications on ``channels`` over its own connection to ``using``.

    Not thread-safe, except ``interrupt()``, which any thread may call. Use it as a
    context manager or call ``close()``.
    """

    def __init__(self, channels: Sequence[str], *, using: str = "default") -> None:
        if isinstance(channels, str):
            raise TypeError("channels must be a sequence of channel names, not one string.")
        self.channels = tuple(channels)
        self.using = using
        self._supported = supported(using)
        # A socket pair rather than os.pipe(): select() takes sockets on every platform.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._connection: psycopg.Connection[Any] | None = None
        self._received: list[tuple[str, str]] = []
        self._failures = 0  # consecutive failed or lost connections
        self._next_attempt = 0.0  # time.monotonic() of the next reconnection attempt
        self._closed = False
        if self._supported:
            self._connect()  # LISTEN now, so the caller may check the database next

    def __repr__(self) -> str:
        state = "closed" if self._closed else "listening" if self._connection else "not listening"
        return f"<Listener {', '.join(self.channels)} on {self.using!r}: {state}>"

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wait(self, timeout: float | None) -> list[tuple[str, str]]:
        """Wait up to ``timeout`` seconds (``None``: until something happens) for notifications.

        Returns every ``(channel, payload)`` received so far, in commit order, or ``[]``
        after a timeout, an ``interrupt()``, or a lost or re-established connection,
        when notifications may have been missed: the caller re-checks the database.
        """
        if self._closed:
            raise RuntimeError("This Listener is closed.")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if not self._supported:
            self._wait_for_interrupt(deadline)
            return []
        if self._connection is None:
            return self._reconnect(deadline)
        if self._received:  # arrived with the LISTEN response
            return self._take_received()
        import psycopg

        connection = self._connection
        try:
            database_socket = connection.fileno()
            watched: list[int | socket.socket] = [database_socket, self._wake_reader]
            readable, _, _ = select.select(watched, [], [], _seconds_until(deadline))
            if self._wake_reader in readable:
                self._drain_wake_socket()
            if database_socket in readable:
                self._read_notifications(connection)
        except (psycopg.Error, OSError, ValueError) as exc:  # ValueError: select() on a closed socket
            self._lost(exc)
            return []
        self._failures = 0  # the connection has served a whole wait
        return self._take_received()

    def interrupt(self) -> None:
        """Make a concurrent ``wait()`` (or, if none is running, the next one) return at once."""
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass  # the buffer is full (a wake-up is pending anyway) or the Listener is closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_connection()
        self._wake_reader.close()
        self._wake_writer.close()

    # -- connection ---------------------------------------------------------------------

    def _connect(self) -> bool:
        import psycopg
        from psycopg import sql

        params = connections[self.using].get_connection_params()
        # Django's cursor class and adapters are for its own connections; this one only LISTENs.
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.setdefault("application_name", "django_durable listener")
        # Bound the time a reconnection can block wait(), and notice a silently dead peer.
        params.setdefault("connect_timeout", 10)
        params.setdefault("keepalives", 1)
        params.setdefault("keepalives_idle", 30)
        params.setdefault("keepalives_interval", 10)
        params.setdefault("keepalives_count", 3)
        connection = None
        try:
            connection = psycopg.Connection.connect(**params, autocommit=True)
            connection.add_notify_handler(self._on_notify)
            connection.execute(
                sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(channel)) for channel in self.channels)
            )
        except (psycopg.Error, OSError) as exc:
            if connection is not None:
                _close_quietly(connection)
            self._failures += 1
            delay = self._backoff()
            logger.warning(
                "Could not LISTEN on %s (database %r): %s; retrying in %.1fs, polling meanwhile.",
                ", ".join(self.channels),
                self.using,
                _one_line(exc),
                delay,
            )
            return False
        self._connection = connection
        return True

    def _reconnect(self, deadline: float | None) -> list[tuple[str, str]]:
        """Wait for the backoff (or the deadline, or an interrupt), then LISTEN again."""
        if _before(deadline, self._next_attempt):
            self._wait_for_interrupt(deadline)
            return []
        if self._wait_for_interrupt(self._next_attempt):
            return []
        if self._connect():
            logger.info("Listening on %s again.", ", ".join(self.channels))
        return []  # notifications may have been missed while disconnected: re-check the database

    def _lost(self, exc: BaseException) -> None:
        self._close_connection()
        self._failures += 1
        delay = self._backoff()
        logger.warning(
            "Lost the LISTEN connection on %s (database %r): %s; reconnecting in %.1fs, polling meanwhile.",
            ", ".join(self.channels),
            self.using,
            _one_line(exc),
            delay,
        )

    def _backoff(self) -> float:
        delay = min(RECONNECT_INITIAL * 2 ** (self._failures - 1), RECONNECT_MAXIMUM)
        self._next_attempt = time.monotonic() + delay
        return delay

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._received.clear()
        if connection is not None:
            _close_quietly(connection)

    # -- notifications ------------------------------------------------------------------

    def _on_notify(self, notification: psycopg.Notify) -> None:
        self._received.append((notification.channel, notification.payload))

    def _read_notifications(self, connection: psycopg.Connection[Any]) -> None:
        """Read what the socket holds and hand every complete notification to psycopg's
        handler (which calls ``_on_notify``), as psycopg itself does between queries."""
        from psycopg import OperationalError, pq

        pgconn = connection.pgconn
        pgconn.consume_input()  # raises OperationalError once the server has gone
        while (notification := pgconn.notifies()) is not None:
            if pgconn.notify_handler is not None:
                pgconn.notify_handler(notification)
        if pgconn.status != pq.ConnStatus.OK:
            raise OperationalError("the connection is broken")

    def _take_received(self) -> list[tuple[str, str]]:
        received, self._received = self._received, []
        return received

    # -- interrupt ----------------------------------------------------------------------

    def _wait_for_interrupt(self, deadline: float | None) -> bool:
        """Sleep until ``deadline`` unless interrupted; returns whether it was interrupted."""
        readable, _, _ = select.select([self._wake_reader], [], [], _seconds_until(deadline))
        if readable:
            self._drain_wake_socket()
            return True
        return False

    def _drain_wake_socket(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass


def _seconds_until(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _before(deadline: float | None, moment: float) -> bool:
    return deadline is not None and deadline <= moment


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _close_quietly(connection: psycopg.Connection[Any]) -> None:
    try:
        connection.close()
    except Exception:  # closing a broken connection may fail; it is being dropped either way
        logger.debug("Error closing a LISTEN connection", exc_info=True)
