"""The test clock: ``WorkflowEnvironment`` sets ``clock_override`` (as ``store.clock_override``)
to a controllable clock; None, in production, is the database's clock. Below both the dialects,
which write its value into their statements, and ``db_now``, which reads the database's clock
through them."""

from __future__ import annotations

import datetime
from collections.abc import Callable

clock_override: Callable[[], datetime.datetime] | None = None
