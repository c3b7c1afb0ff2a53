"""A run as a picture: its durable calls as bars on a time axis, as inline SVG.

Pure: it reads history events (model rows, engine ``Event``s or dicts with
``seq``, ``kind``, ``name``, ``task_id``, ``payload``, ``timestamp``) and the
run's pending work items, and returns markup. No ORM, no scripts; hover titles
(``<title>``) carry the details.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from ..engine.events import CLOSE_KINDS, EventKind

WIDTH = 960
LABEL_WIDTH = 220
ROW_HEIGHT = 20
BAR_HEIGHT = 12
AXIS_HEIGHT = 28
RIGHT_PAD = 32  # room for the last tick label
MIN_BAR = 2.0

COLOURS = {
    "activity": "#417690",
    "activity-failed": "#ba2121",
    "activity-open": "#e0a526",
    "timer": "#8a8a8a",
    "timer-canceled": "#c8c8c8",
    "wait": "#7a5fb5",
    "wait-timeout": "#b39ddb",
    "child": "#2a8c7f",
    "child-failed": "#ba2121",
    "run": "#79aec8",
    "task": "#264b5d",
    "marker": "#ba2121",
}
LEGEND = (
    ("activity", "activity"),
    ("activity-failed", "failed"),
    ("activity-open", "open"),
    ("timer", "timer"),
    ("wait", "wait for event"),
    ("child", "child workflow"),
    ("task", "workflow task"),
)
# Tick spacings to choose from, in seconds: the first giving at most MAX_TICKS ticks wins.
TICK_STEPS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
    60 * 86400,
    90 * 86400,
    180 * 86400,
    365 * 86400,
)
MAX_TICKS = 8
MARKER_KINDS = frozenset(
    {EventKind.CANCEL_REQUESTED, EventKind.EXECUTION_SUSPENDED, EventKind.EXECUTION_RESUMED, EventKind.PATCH_MARKER}
)


@dataclasses.dataclass
class Bar:
    """One durable call (or the run itself) drawn as a bar from ``start`` to ``end``."""

    label: str
    kind: str  # a COLOURS key
    start: datetime.datetime
    end: datetime.datetime | None = None  # None: still open
    detail: str = ""
    seq: int = 0
    task_id: int | None = None


def _get(event: Any, field: str, default: Any = None) -> Any:
    if isinstance(event, Mapping):
        return event.get(field, default)
    return getattr(event, field, default)


def _payload(event: Any) -> Mapping[str, Any]:
    payload = _get(event, "payload")
    return payload if isinstance(payload, Mapping) else {}


def _kind(event: Any) -> str:
    return str(_get(event, "kind", ""))


def format_duration(seconds: float) -> str:
    """A short human duration: ``850ms``, ``12s``, ``3m20s``, ``4h``, ``30d``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return "".join(shown) or "0s"


def error_text(error: Any) -> str:
    """``Type: message`` of a recorded failure."""
    if isinstance(error, Mapping):
        return f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return str(error) if error else ""


@dataclasses.dataclass
class Picture:
    bars: list[Bar]
    markers: list[tuple[datetime.datetime, str]]  # workflow tasks and lifecycle events
    first_at: datetime.datetime | None
    last_at: datetime.datetime | None
    closed_at: datetime.datetime | None


def collect_bars(events: Iterable[Any], pending: Iterable[Any] = ()) -> Picture:
    """The bars of a run's calls in the order they were made, and its markers."""
    bars: list[Bar] = []
    markers: list[tuple[datetime.datetime, str]] = []
    by_task: dict[int, Bar] = {}
    open_waits: dict[str, deque[Bar]] = defaultdict(deque)
    unclaimed: dict[str, deque[datetime.datetime]] = defaultdict(deque)
    closed_at: datetime.datetime | None = None
    first_at: datetime.datetime | None = None
    last_at: datetime.datetime | None = None

    for event in sorted(events, key=lambda e: _get(e, "seq") or 0):
        kind = _kind(event)
        name = str(_get(event, "name") or "")
        task_id = _get(event, "task_id")
        at = _get(event, "timestamp")
        seq = _get(event, "seq") or 0
        payload = _payload(event)
        if at is None:
            continue
        first_at = at if first_at is None else min(first_at, at)
        last_at = at if last_at is None else max(last_at, at)
        if kind == EventKind.ACTIVITY_SCHEDULED:
            bar = Bar(f"{name} #{task_id}", "activity", at, detail=f"activity {name} (task {task_id})", seq=seq)
        elif kind == EventKind.TIMER_STARTED:
            fire_at = payload.get("fire_at", "")
            bar = Bar(f"timer #{task_id}", "timer", at, detail=f"timer (task {task_id}) until {fire_at}", seq=seq)
        elif kind == EventKind.EVENT_WAIT_STARTED:
            detail = f"wait for event {name} (task {task_id})"
            bar = Bar(f"wait {name!r} #{task_id}", "wait", at, detail=detail, seq=seq)
            if unclaimed[name]:
                # Sent before the workflow waited: kept, and taken at once.
                unclaimed[name].popleft()
                bar.end = at
                bar.detail += ", answered by an event already received"
            else:
                open_waits[name].append(bar)
        elif kind == EventKind.CHILD_WORKFLOW_SCHEDULED:
            child_id = payload.get("workflow_id", "")
            bar = Bar(f"child {name} #{task_id}", "child", at, detail=f"child workflow {name} {child_id}", seq=seq)
        else:
            bar = None
        if bar is not None:
            bar.task_id = task_id
            bars.append(bar)
            if task_id is not None:
                by_task[task_id] = bar
            continue

        answered = by_task.get(task_id) if task_id is not None else None
        if kind in (EventKind.ACTIVITY_COMPLETED, EventKind.ACTIVITY_FAILED) and answered is not None:
            answered.end = at
            attempt = payload.get("attempt")
            if isinstance(attempt, int) and attempt > 1:
                answered.label += f" ×{attempt}"
                answered.detail += f", {attempt} attempts"
            if kind == EventKind.ACTIVITY_FAILED:
                answered.kind = "activity-failed"
                answered.detail += f", failed: {error_text(payload.get('error'))}"
            else:
                answered.detail += ", completed"
        elif kind in (EventKind.TIMER_FIRED, EventKind.TIMER_CANCELED) and answered is not None:
            answered.end = at
            if kind == EventKind.TIMER_CANCELED:
                answered.kind = "timer-canceled"
                answered.detail += ", canceled"
            else:
                answered.detail += ", fired"
            # wait_for_event(timeout=...) is an event wait and then its timer: a fired
            # timer right after an open wait means that wait timed out (and took nothing).
            if kind == EventKind.TIMER_FIRED:
                wait = by_task.get(task_id - 1)
                if wait is not None and wait.kind == "wait" and wait.end is None:
                    for queue in open_waits.values():
                        if wait in queue:
                            queue.remove(wait)
                    wait.end = at
                    wait.kind = "wait-timeout"
                    wait.detail += ", timed out"
        elif kind in (EventKind.CHILD_WORKFLOW_COMPLETED, EventKind.CHILD_WORKFLOW_FAILED) and answered is not None:
            answered.end = at
            if kind == EventKind.CHILD_WORKFLOW_FAILED:
                answered.kind = "child-failed"
                answered.detail += f", {payload.get('status', 'failed')}: {error_text(payload.get('error'))}"
            else:
                answered.detail += ", completed"
        elif kind == EventKind.EVENT_RAISED:
            if open_waits[name]:
                wait = open_waits[name].popleft()
                wait.end = at
                wait.detail += ", answered"
            else:
                unclaimed[name].append(at)
        elif kind == EventKind.WORKFLOW_TASK_STARTED:
            markers.append((at, f"workflow task (event {seq})"))
        elif kind in MARKER_KINDS:
            markers.append((at, f"{kind} {name}".strip() + f" (event {seq})"))
        if kind in CLOSE_KINDS:
            closed_at = at

    pending_by_task = {_get(item, "task_id"): item for item in pending if _get(item, "kind") == "activity"}
    for bar in bars:
        if bar.end is None and bar.kind == "activity":
            bar.kind = "activity-open"
            if bar.task_id in pending_by_task:
                bar.detail += _pending_detail(pending_by_task[bar.task_id])
    return Picture(bars, markers, first_at, last_at, closed_at)


def _pending_detail(item: Any) -> str:
    parts = [f", attempt {_get(item, 'attempt', 0)}"]
    if _get(item, "awaiting_completion"):
        parts.append(" awaiting completion")
    if _get(item, "lease_owner"):
        parts.append(f", leased by {_get(item, 'lease_owner')}")
    elif _get(item, "due_at") is not None:
        parts.append(f", next attempt due {_get(item, 'due_at').isoformat()}")
    if _get(item, "last_error"):
        parts.append(f", last error {error_text(_get(item, 'last_error'))}")
    return "".join(parts)


def _ticks(span: float) -> list[float]:
    step = next((s for s in TICK_STEPS if span / s <= MAX_TICKS), None)
    if step is None:
        step = math.ceil(span / MAX_TICKS / TICK_STEPS[-1]) * TICK_STEPS[-1]
    return [i * step for i in range(int(span / step) + 1)]


def render_timeline(
    events: Iterable[Any],
    pending: Iterable[Any] = (),
    *,
    now: datetime.datetime,
    max_rows: int = 150,
    width: int = WIDTH,
) -> str:
    """Inline SVG of the run: one row per durable call (activities, timers, waits,
    children) from when it was made to when it was answered, workflow tasks as
    ticks on the run's own row. Open calls run to the close of the run, or to ``now``."""
    picture = collect_bars(events, pending)
    bars, markers, closed_at = picture.bars, picture.markers, picture.closed_at
    if picture.first_at is None or picture.last_at is None:
        return _empty_svg(width)
    origin = picture.first_at
    horizon = closed_at or max(picture.last_at, now)
    for bar in bars:
        if bar.end is None:
            bar.detail += ", still open" if closed_at is None else ", never answered"
    shown = bars[:max_rows]
    hidden = len(bars) - len(shown)
    span = max((horizon - origin).total_seconds(), 0.001)
    plot_left, plot_right = LABEL_WIDTH, width - RIGHT_PAD
    scale = (plot_right - plot_left) / span

    def x_of(at: datetime.datetime) -> float:
        return plot_left + (at - origin).total_seconds() * scale

    rows = 1 + len(shown) + (1 if hidden else 0)
    legend_y = AXIS_HEIGHT + rows * ROW_HEIGHT + 8
    height = legend_y + 22
    summary = f"Timeline: {len(bars)} calls over {format_duration(span)} from {origin.isoformat()}"
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="durable-timeline" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="11">'
        ),
        f"<title>{escape(summary)}</title>",
    ]
    ticks = _ticks(span)
    bottom = AXIS_HEIGHT + rows * ROW_HEIGHT
    for offset in ticks:
        x = plot_left + offset * scale
        out.append(
            f'<line x1="{x:.1f}" y1="{AXIS_HEIGHT - 6}" x2="{x:.1f}" y2="{bottom}" '
            'stroke="#888" stroke-opacity="0.35" />'
        )
        out.append(
            f'<text x="{x:.1f}" y="{AXIS_HEIGHT - 10}" text-anchor="middle" fill="currentColor">'
            f"{escape('+' + format_duration(offset) if offset else '0')}</text>"
        )
    out.append(f'<text x="4" y="{AXIS_HEIGHT - 10}" fill="currentColor">{escape(_when(origin))}</text>')

    # Row 0: the run itself, with its workflow tasks and lifecycle events as ticks.
    y = AXIS_HEIGHT
    out.append(_label(y, "run"))
    run_title = f"the run, {format_duration(span)}" + ("" if closed_at else " so far")
    out.append(_rect(plot_left, y, max(plot_right - plot_left, MIN_BAR), "run", run_title, opacity=0.35))
    for at, text in markers:
        colour = COLOURS["task"] if text.startswith("workflow task") else COLOURS["marker"]
        x = x_of(at)
        out.append(
            f'<line x1="{x:.1f}" y1="{y + 3}" x2="{x:.1f}" y2="{y + ROW_HEIGHT - 3}" stroke="{colour}" '
            f'stroke-width="2"><title>{escape(text + " at " + at.isoformat())}</title></line>'
        )
    for index, bar in enumerate(shown, start=1):
        y = AXIS_HEIGHT + index * ROW_HEIGHT
        end = bar.end or horizon
        duration = (end - bar.start).total_seconds()
        out.append(_label(y, bar.label))
        title = f"{bar.detail}; event {bar.seq}, {format_duration(duration)} from {bar.start.isoformat()}"
        width_px = max(x_of(end) - x_of(bar.start), MIN_BAR)
        out.append(_rect(x_of(bar.start), y, width_px, bar.kind, title, dashed=bar.end is None))
    if hidden:
        y = AXIS_HEIGHT + (len(shown) + 1) * ROW_HEIGHT
        out.append(
            f'<text x="4" y="{y + 14}" fill="currentColor" font-style="italic">… {hidden} more calls not drawn</text>'
        )
    x = 4
    for key, text in LEGEND:
        out.append(f'<rect x="{x}" y="{legend_y + 3}" width="12" height="10" fill="{COLOURS[key]}" />')
        out.append(f'<text x="{x + 16}" y="{legend_y + 12}" fill="currentColor">{escape(text)}</text>')
        x += 24 + 7 * len(text)
    out.append("</svg>")
    return "\n".join(out)


def _when(at: datetime.datetime) -> str:
    if at.utcoffset() == datetime.timedelta(0):
        return at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return at.isoformat(sep=" ", timespec="seconds")


def _label(y: int, text: str) -> str:
    short = text if len(text) <= 34 else text[:33] + "…"
    return f'<text x="4" y="{y + 14}" fill="currentColor"><title>{escape(text)}</title>{escape(short)}</text>'


def _rect(x: float, y: int, w: float, kind: str, title: str, *, dashed: bool = False, opacity: float = 1.0) -> str:
    extra = ' stroke="currentColor" stroke-dasharray="3 2"' if dashed else ""
    fade = f' fill-opacity="{opacity}"' if opacity != 1.0 else ""
    return (
        f'<rect class="bar {kind}" x="{x:.1f}" y="{y + (ROW_HEIGHT - BAR_HEIGHT) // 2}" width="{w:.1f}" '
        f'height="{BAR_HEIGHT}" rx="2" fill="{COLOURS[kind]}"{fade}{extra}><title>{escape(title)}</title></rect>'
    )


def _empty_svg(width: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="durable-timeline" width="{width}" height="30" '
        f'viewBox="0 0 {width} 30" role="img" font-family="sans-serif" font-size="11">'
        '<text x="4" y="18" fill="currentColor">No history yet.</text></svg>'
    )
