"""The schedule specification (django_durable.schedules.spec) as pure code: parsing and validation of cron and
intervals, tick times across DST (exact UTC instants in Europe/Paris), start/end edges, jitter, workflow ids and
the JSON round trip."""

from __future__ import annotations

import datetime
import json
import time
from zoneinfo import ZoneInfo

import pytest

from django_durable.schedules import InvalidSchedule, ScheduleSpec, tick_workflow_id, trigger_workflow_id

pytestmark = pytest.mark.engine

UTC = datetime.timezone.utc
PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


def cron(expression: str, timezone: str = "Europe/Paris", **options: object) -> ScheduleSpec:
    return ScheduleSpec.build(cron=expression, timezone=timezone, **options)  # type: ignore[arg-type]


# Europe/Paris, 2026: 2026-03-29 01:00Z the clocks jump from 02:00 CET to 03:00 CEST (02:xx does not exist);
# 2026-10-25 01:00Z they fall back from 03:00 CEST to 02:00 CET (02:xx happens twice).
SPRING_EVE = utc(2026, 3, 28, 22)
AUTUMN_EVE = utc(2026, 10, 24, 22)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # A skipped fixed time fires once at the first minute that exists after it: 03:00 CEST.
        ("30 2 * * *", SPRING_EVE, [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]),
        ("0 3 * * *", SPRING_EVE, [utc(2026, 3, 29, 1), utc(2026, 3, 30, 1), utc(2026, 3, 31, 1)]),
        # A repeated fixed time fires once, in its first pass (CEST); 03:00 only exists in CET.
        ("30 2 * * *", AUTUMN_EVE, [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]),
        ("0 3 * * *", AUTUMN_EVE, [utc(2026, 10, 25, 2), utc(2026, 10, 26, 2), utc(2026, 10, 27, 2)]),
        # Expressions with a wildcard minute or hour follow elapsed time: an hour lost, an hour fired twice.
        (
            "0 * * * *",
            SPRING_EVE,
            [utc(2026, 3, 28, 23), utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)],
        ),
        (
            "0 * * * *",
            AUTUMN_EVE,
            [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)],
        ),
        ("*/30 2 * * *", SPRING_EVE, [utc(2026, 3, 30, 0), utc(2026, 3, 30, 0, 30)]),
        (
            "*/30 2 * * *",
            AUTUMN_EVE,
            [utc(2026, 10, 25, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1), utc(2026, 10, 25, 1, 30)],
        ),
    ],
)
def test_cron_across_the_dst_transitions_of_europe_paris(
    expression: str, after: datetime.datetime, expected: list[datetime.datetime]
) -> None:
    assert cron(expression).upcoming(after, len(expected)) == expected


def test_every_half_hour_in_paris_ticks_every_thirty_real_minutes_across_both_transitions() -> None:
    spec = cron("*/30 * * * *")
    for eve in (SPRING_EVE, AUTUMN_EVE):
        ticks = spec.ticks(eve, eve + datetime.timedelta(hours=6), limit=100)
        assert ticks == [eve + datetime.timedelta(minutes=30 * n) for n in range(1, 13)]
    # In local time: 01:30 CET is followed by 03:00 CEST; 02:30 CEST by 02:00 CET.
    spring = [tick.astimezone(PARIS).strftime("%H:%M%Z") for tick in spec.upcoming(utc(2026, 3, 29, 0), 3)]
    autumn = [tick.astimezone(PARIS).strftime("%H:%M%Z") for tick in spec.upcoming(utc(2026, 10, 25, 0), 3)]
    assert spring == ["01:30CET", "03:00CEST", "03:30CEST"]
    assert autumn == ["02:30CEST", "02:00CET", "02:30CET"]


def test_a_fixed_time_asked_from_inside_the_second_pass_of_the_repeated_hour_is_not_repeated() -> None:
    # 01:15Z is 02:15 CET, the second pass: 02:30 already fired at 00:30Z (02:30 CEST), and is strictly before.
    assert cron("30 2 * * *").next_tick(utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 26, 1, 30)
    assert cron("0 3 * * *").next_tick(utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 25, 2)
    assert cron("30 2 * * *").next_tick(utc(2026, 10, 25, 0, 15)) == utc(2026, 10, 25, 0, 30)


def test_cron_in_utc_and_in_another_zone() -> None:
    assert cron("30 2 * * *", "UTC").next_tick(utc(2026, 1, 1)) == utc(2026, 1, 1, 2, 30)
    assert cron("0 9 * * MON", "America/New_York").next_tick(utc(2026, 1, 1)) == utc(2026, 1, 5, 14)
    assert cron("0 9 * * mon-fri", "Asia/Kolkata").next_tick(utc(2026, 1, 2, 3, 30)) == utc(2026, 1, 5, 3, 30)


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@yearly", [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("@annually", [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("@monthly", [utc(2026, 6, 1), utc(2026, 7, 1)]),
        ("@weekly", [utc(2026, 5, 17), utc(2026, 5, 24)]),  # Sundays
        ("@daily", [utc(2026, 5, 15), utc(2026, 5, 16)]),
        ("@midnight", [utc(2026, 5, 15), utc(2026, 5, 16)]),
        ("@hourly", [utc(2026, 5, 14, 11), utc(2026, 5, 14, 12)]),
        ("  @Daily ", [utc(2026, 5, 15), utc(2026, 5, 16)]),
    ],
)
def test_aliases(alias: str, expected: list[datetime.datetime]) -> None:
    spec = cron(alias, "UTC")
    assert spec.cron == alias.strip()  # kept as given
    assert spec.upcoming(utc(2026, 5, 14, 10, 30), 2) == expected


def test_aliases_are_read_in_the_zone() -> None:
    assert cron("@daily").next_tick(utc(2026, 7, 1, 12)) == utc(2026, 7, 1, 22)  # midnight CEST


def test_every_is_aligned_to_the_unix_epoch() -> None:
    five_minutes = ScheduleSpec.build(every=300, timezone="Europe/Paris")
    assert five_minutes.upcoming(utc(2026, 5, 14, 10, 2, 17), 3) == [
        utc(2026, 5, 14, 10, 5),
        utc(2026, 5, 14, 10, 10),
        utc(2026, 5, 14, 10, 15),
    ]
    assert five_minutes.next_tick(utc(2026, 5, 14, 10, 5)) == utc(2026, 5, 14, 10, 10)  # strictly after
    assert five_minutes.next_tick(utc(2026, 5, 14, 10, 4, 59, 999999)) == utc(2026, 5, 14, 10, 5)
    seven = ScheduleSpec.build(every=7, timezone="UTC")
    tick = seven.next_tick(utc(2026, 5, 14))
    assert tick is not None and int(tick.timestamp()) % 7 == 0
    assert ScheduleSpec.build(every=3600, timezone="UTC").next_tick(utc(1969, 12, 31, 22, 30)) == utc(1969, 12, 31, 23)


def test_every_ignores_dst() -> None:
    hourly = ScheduleSpec.build(every=3600, timezone="Europe/Paris")
    assert hourly.upcoming(SPRING_EVE, 4) == [
        utc(2026, 3, 28, 23),
        utc(2026, 3, 29),
        utc(2026, 3, 29, 1),
        utc(2026, 3, 29, 2),
    ]
    assert hourly.upcoming(AUTUMN_EVE, 4) == [
        utc(2026, 10, 24, 23),
        utc(2026, 10, 25),
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 2),
    ]


@pytest.mark.parametrize("every", [90, 90.0, datetime.timedelta(seconds=90), datetime.timedelta(minutes=1, seconds=30)])
def test_every_as_int_whole_float_or_timedelta(every: int | float | datetime.timedelta) -> None:
    spec = ScheduleSpec.build(every=every, timezone="UTC")
    assert spec.every == 90 and type(spec.every) is int
    assert ScheduleSpec.build(every=datetime.timedelta(days=2), timezone="UTC").every == 172800


def test_inputs_in_any_zone_outputs_in_utc() -> None:
    spec = cron("0 3 * * *")
    tick = spec.next_tick(datetime.datetime(2026, 5, 14, 12, tzinfo=ZoneInfo("Asia/Tokyo")))  # 03:00Z
    assert tick == utc(2026, 5, 15, 1) and tick.tzinfo is UTC
    for tick in spec.upcoming(utc(2026, 5, 14), 3) + spec.ticks(utc(2026, 5, 14), utc(2026, 6, 1), limit=3):
        assert tick.tzinfo is UTC
    assert all(t.tzinfo is UTC for t in ScheduleSpec.build(every=60, timezone="UTC").upcoming(utc(2026, 1, 1), 3))


@pytest.mark.parametrize(
    "daily",
    [dict(cron="0 12 * * *", timezone="Europe/Paris"), dict(every=86400, timezone="Europe/Paris")],
    ids=["cron", "every"],
)
def test_a_tick_exactly_at_start_at_or_at_end_at_counts(daily: dict[str, object]) -> None:
    first = ScheduleSpec.build(**daily).next_tick(utc(2026, 5, 1))  # type: ignore[arg-type]
    assert first is not None
    expected = [first + datetime.timedelta(days=n) for n in range(3)]
    spec = ScheduleSpec.build(**daily, start_at=expected[0], end_at=expected[-1])  # type: ignore[arg-type]
    assert spec.upcoming(utc(2026, 1, 1), 10) == expected
    assert spec.ticks(utc(2026, 1, 1), utc(2027, 1, 1), limit=10) == expected
    assert spec.next_tick(expected[0]) == expected[1]  # strictly after `after`, still
    assert spec.next_tick(expected[-1]) is None
    assert spec.next_tick(utc(2030, 1, 1)) is None
    # One microsecond later (start) or earlier (end) leaves that tick out.
    micro = datetime.timedelta(microseconds=1)
    inner = ScheduleSpec.build(**daily, start_at=expected[0] + micro, end_at=expected[-1] - micro)  # type: ignore[arg-type]
    assert inner.upcoming(utc(2026, 1, 1), 10) == expected[1:-1]


def test_start_at_between_ticks_and_with_microseconds() -> None:
    spec = ScheduleSpec.build(every=60, timezone="UTC", start_at=utc(2026, 5, 14, 10, 0, 0, 1))
    assert spec.next_tick(utc(2000, 1, 1)) == utc(2026, 5, 14, 10, 1)
    spec = cron("* * * * *", "UTC", start_at=utc(2026, 5, 14, 10, 0, 30))
    assert spec.next_tick(utc(2000, 1, 1)) == utc(2026, 5, 14, 10, 1)


def test_ticks_is_bounded_by_until_and_by_limit() -> None:
    spec = cron("0 * * * *", "UTC")
    assert spec.ticks(utc(2026, 5, 14, 10), utc(2026, 5, 14, 13), limit=10) == [
        utc(2026, 5, 14, 11),
        utc(2026, 5, 14, 12),
        utc(2026, 5, 14, 13),  # until counts
    ]
    assert spec.ticks(utc(2026, 5, 14, 10), utc(2026, 5, 14, 13), limit=2) == [
        utc(2026, 5, 14, 11),
        utc(2026, 5, 14, 12),
    ]
    assert spec.ticks(utc(2026, 5, 14, 10), utc(2026, 5, 14, 13), limit=0) == []
    assert spec.ticks(utc(2026, 5, 14, 13), utc(2026, 5, 14, 10), limit=10) == []


def test_ticks_of_every_second_over_centuries_stop_at_the_limit_quickly() -> None:
    began = time.monotonic()
    every_second = ScheduleSpec.build(every=1, timezone="UTC")
    ticks = every_second.ticks(utc(1980, 1, 1), utc(2200, 1, 1), limit=1000)
    assert ticks == [utc(1980, 1, 1) + datetime.timedelta(seconds=n) for n in range(1, 1001)]
    every_minute = cron("* * * * *", "Europe/Paris")
    assert len(every_minute.ticks(utc(1980, 1, 1), utc(2200, 1, 1), limit=1000)) == 1000
    assert time.monotonic() - began < 5


def test_a_long_gap_is_not_scanned_minute_by_minute() -> None:
    began = time.monotonic()
    yearly = cron("0 0 29 2 *", "Europe/Paris")  # leap days only
    assert yearly.upcoming(utc(2026, 1, 1), 3) == [utc(2028, 2, 28, 23), utc(2032, 2, 28, 23), utc(2036, 2, 28, 23)]
    assert time.monotonic() - began < 5


def test_upcoming() -> None:
    spec = cron("15 8 * * 1-5", "UTC", end_at=utc(2026, 5, 19, 8, 15))  # Thursday 14 May 2026
    assert spec.upcoming(utc(2026, 5, 14, 9), 10) == [
        utc(2026, 5, 15, 8, 15),
        utc(2026, 5, 18, 8, 15),
        utc(2026, 5, 19, 8, 15),
    ]
    assert spec.upcoming(utc(2026, 5, 14, 9), 1) == [utc(2026, 5, 15, 8, 15)]
    assert spec.upcoming(utc(2026, 5, 14, 9), 0) == []


def test_a_cron_that_matches_only_rarely_and_the_end_of_time() -> None:
    spec = cron("0 0 * 2 MON#5", "UTC")  # a fifth Monday in February: 29 February on a Monday
    assert spec.upcoming(utc(2017, 1, 1), 2) == [utc(2044, 2, 29), utc(2072, 2, 29)]
    # Past year 9999 datetime ends: no tick rather than an OverflowError.
    assert cron("0 0 1 1 *").next_tick(utc(9999, 6, 1)) is None
    assert ScheduleSpec.build(every=86400, timezone="UTC").next_tick(utc(9999, 12, 31, 12)) is None


def test_jitter_is_deterministic_bounded_and_keyed_by_schedule_and_tick() -> None:
    spec = cron("0 * * * *", "UTC", jitter=30)
    ticks = spec.upcoming(utc(2026, 5, 14), 200)
    delays = [spec.jitter_for("nightly-report", tick) for tick in ticks]
    assert delays == [spec.jitter_for("nightly-report", tick) for tick in ticks]  # same for every worker
    assert all(datetime.timedelta(0) <= delay < datetime.timedelta(seconds=30) for delay in delays)
    assert len(set(delays)) > 190  # spread, not constant
    assert max(delays) > datetime.timedelta(seconds=25) and min(delays) < datetime.timedelta(seconds=5)
    assert [spec.jitter_for("other", tick) for tick in ticks] != delays
    # The same instant in another zone is the same tick.
    assert spec.jitter_for("nightly-report", ticks[0].astimezone(PARIS)) == delays[0]
    # A rebuilt spec (another process) agrees: the hash is not Python's randomised hash().
    assert (
        ScheduleSpec.from_json(json.loads(json.dumps(spec.to_json()))).jitter_for("nightly-report", ticks[0])
        == delays[0]
    )


def test_jitter_is_pinned_so_workers_of_different_releases_agree() -> None:
    # blake2b of "nightly-report\n2026-12-07T03:00:00+00:00", a fraction of the 60 s span: change it knowingly.
    spec = ScheduleSpec.build(every=60, timezone="UTC", jitter=datetime.timedelta(minutes=1))
    assert spec.jitter == 60.0
    assert spec.jitter_for("nightly-report", utc(2026, 12, 7, 3)) == datetime.timedelta(seconds=1, microseconds=720113)


@pytest.mark.parametrize("jitter", [None, 0, 0.0, datetime.timedelta(0)])
def test_no_or_zero_jitter_is_no_delay(jitter: object) -> None:
    spec = ScheduleSpec.build(every=60, timezone="UTC", jitter=jitter)  # type: ignore[arg-type]
    assert spec.jitter_for("s", utc(2026, 1, 1)) == datetime.timedelta(0)


def test_tiny_jitter_stays_below_its_bound() -> None:
    spec = ScheduleSpec.build(every=60, timezone="UTC", jitter=0.000002)
    delays = {spec.jitter_for("s", utc(2026, 1, 1) + datetime.timedelta(minutes=n)) for n in range(100)}
    assert delays == {datetime.timedelta(0), datetime.timedelta(microseconds=1)}


def test_workflow_ids() -> None:
    tick = utc(2026, 12, 7, 3)
    assert tick_workflow_id("nightly-report", tick) == "nightly-report-20261207T030000Z"
    assert tick_workflow_id("nightly-report", tick.astimezone(PARIS)) == "nightly-report-20261207T030000Z"
    assert (
        tick_workflow_id("x", datetime.datetime(2026, 7, 1, 5, 30, tzinfo=ZoneInfo("Asia/Kolkata")))
        == "x-20260701T000000Z"
    )
    now = utc(2026, 12, 7, 3, 0, 0, 123456)
    assert trigger_workflow_id("nightly-report", now) == "nightly-report-20261207T030000.123Z"
    assert trigger_workflow_id("nightly-report", now.astimezone(PARIS)) == "nightly-report-20261207T030000.123Z"
    assert trigger_workflow_id("nightly-report", tick) == "nightly-report-20261207T030000.000Z"
    assert tick_workflow_id("old", utc(999, 1, 2, 3, 4, 5)) == "old-09990102T030405Z"


def test_workflow_ids_refuse_naive_datetimes_and_ticks_that_are_not_whole_seconds() -> None:
    with pytest.raises(ValueError, match="tick must be an aware datetime"):
        tick_workflow_id("s", datetime.datetime(2026, 12, 7, 3))
    with pytest.raises(ValueError, match="now must be an aware datetime"):
        trigger_workflow_id("s", datetime.datetime(2026, 12, 7, 3))
    with pytest.raises(ValueError, match="a tick is a whole second"):
        tick_workflow_id("s", utc(2026, 12, 7, 3, 0, 0, 5))


@pytest.mark.parametrize(
    "spec",
    [
        ScheduleSpec.build(cron="30 2 * * *", timezone="Europe/Paris"),
        ScheduleSpec.build(cron="@weekly", timezone="UTC", jitter=2.5),
        ScheduleSpec.build(
            every=datetime.timedelta(minutes=5),
            timezone="America/New_York",
            start_at=datetime.datetime(2026, 1, 1, 9, tzinfo=ZoneInfo("America/New_York")),
            end_at=utc(2027, 1, 1),
            jitter=datetime.timedelta(seconds=10),
        ),
    ],
)
def test_json_round_trip(spec: ScheduleSpec) -> None:
    data = json.loads(json.dumps(spec.to_json()))
    assert set(data) == {"cron", "every", "timezone", "start_at", "end_at", "jitter"}
    again = ScheduleSpec.from_json(data)
    assert again == spec and again.to_json() == spec.to_json()
    assert again.upcoming(utc(2026, 3, 1), 5) == spec.upcoming(utc(2026, 3, 1), 5)


def test_build_normalises() -> None:
    spec = ScheduleSpec.build(
        cron="  0 3 * * *\n",
        timezone="Europe/Paris",
        start_at=datetime.datetime(2026, 1, 1, 9, tzinfo=PARIS),
        jitter=3,
    )
    assert spec.cron == "0 3 * * *" and spec.every is None and spec.jitter == 3.0 and type(spec.jitter) is float
    assert spec.start_at == utc(2026, 1, 1, 8) and spec.start_at.tzinfo is UTC
    assert spec.to_json() == {
        "cron": "0 3 * * *",
        "every": None,
        "timezone": "Europe/Paris",
        "start_at": "2026-01-01T08:00:00+00:00",
        "end_at": None,
        "jitter": 3.0,
    }
    assert ScheduleSpec.from_json({"every": 60, "timezone": "UTC", "start_at": "2026-01-01T08:00:00Z"}).start_at == utc(
        2026, 1, 1, 8
    )


def test_the_constructor_validates_too() -> None:
    with pytest.raises(InvalidSchedule, match="exactly one of cron"):
        ScheduleSpec(cron=None, every=None, timezone="UTC")
    with pytest.raises(InvalidSchedule, match="invalid cron"):
        ScheduleSpec(cron="61 * * * *", every=None, timezone="UTC")


NAIVE = datetime.datetime(2026, 1, 1)
ACCEPTED_CRON = "five fields 'minute hour day-of-month month day-of-week'"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(cron="0 3 * * *", every=60), "exactly one of cron .* and every .*got both"),
        (dict(), "exactly one of cron .* and every .*got neither"),
        (dict(cron="61 * * * *"), f"invalid cron '61 \\* \\* \\* \\*': Bad minute; expected {ACCEPTED_CRON}"),
        (dict(cron="0 25 * * *"), "invalid cron .*Bad hour"),
        (dict(cron="0 0 32 * *"), "invalid cron .*Bad day-of-month"),
        (dict(cron="0 0 30 2 *"), "invalid cron .*Bad day-of-month"),  # never happens: refused at creation
        (dict(cron="0 0 * 13 *"), "invalid cron .*Bad month"),
        (dict(cron="0 0 * * FUNDAY"), "invalid cron .*Bad day-of-week"),
        (dict(cron="every day"), f"has 2 fields: expected {ACCEPTED_CRON}"),
        (dict(cron="0 0 * * * 2026"), "has six fields: seconds are not supported"),
        (dict(cron="0 0 0 * * * 2026"), "has 7 fields"),
        (dict(cron="*/5 * * * * *"), "has six fields: seconds are not supported .*use every="),
        (dict(cron="@reboot"), "'@reboot' is not supported"),
        (dict(cron="@fortnightly"), "unknown cron alias '@fortnightly': expected .*@yearly, @annually, @monthly"),
        (dict(cron=""), "cron must be a non-empty string"),
        (dict(cron="   "), "cron must be a non-empty string"),
        (dict(cron=5), "cron must be a non-empty string"),
        (
            dict(cron="0 3 * * *", timezone="Mars/Olympus_Mons"),
            "unknown timezone 'Mars/Olympus_Mons': expected an IANA",
        ),
        (dict(cron="0 3 * * *", timezone="../../etc/passwd"), "unknown timezone"),
        (dict(cron="0 3 * * *", timezone=""), "timezone must be an IANA zone name"),
        (dict(cron="0 3 * * *", timezone=None), "timezone must be an IANA zone name"),
        (dict(every=0), "every must be whole seconds, at least 1"),
        (dict(every=-60), "every must be whole seconds, at least 1"),
        (dict(every=1.5), "every must be whole seconds.*got 1.5"),
        (dict(every=float("inf")), "every must be whole seconds"),
        (dict(every=float("nan")), "every must be whole seconds"),
        (dict(every=True), "every must be whole seconds"),
        (dict(every="60"), "every must be whole seconds"),
        (dict(every=datetime.timedelta(seconds=1.5)), "which has a fraction of a second"),
        (dict(every=datetime.timedelta(0)), "every must be whole seconds, at least 1"),
        (dict(every=datetime.timedelta(seconds=-5)), "every must be whole seconds, at least 1"),
        (dict(every=60, start_at=NAIVE), "start_at must be an aware datetime .*got the naive 2026-01-01T00:00:00"),
        (dict(every=60, end_at=NAIVE), "end_at must be an aware datetime"),
        (dict(every=60, start_at="2026-01-01"), "start_at must be an aware datetime"),
        (dict(every=60, start_at=utc(2026, 2, 1), end_at=utc(2026, 1, 1)), "end_at .* must be after start_at"),
        (dict(every=60, start_at=utc(2026, 1, 1), end_at=utc(2026, 1, 1)), "end_at .* must be after start_at"),
        (dict(every=60, jitter=-1), "jitter must be seconds >= 0.*got -1"),
        (dict(every=60, jitter=datetime.timedelta(seconds=-1)), "jitter must be seconds >= 0"),
        (dict(every=60, jitter=float("inf")), "jitter must be seconds >= 0"),
        (dict(every=60, jitter="5"), "jitter must be seconds >= 0"),
    ],
)
def test_invalid_specifications_are_refused_with_a_clear_message(options: dict[str, object], message: str) -> None:
    options.setdefault("timezone", "UTC")
    with pytest.raises(InvalidSchedule, match=message):
        ScheduleSpec.build(**options)  # type: ignore[arg-type]


def test_invalid_schedule_is_a_value_error() -> None:
    assert issubclass(InvalidSchedule, ValueError)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"every": 60, "timezone": "UTC", "interval": 5}, "unknown schedule fields \\['interval'\\]"),
        ({"every": 60}, "timezone must be an IANA zone name"),
        ({"every": 60, "timezone": "UTC", "start_at": "yesterday"}, "start_at is not an ISO 8601 datetime"),
        ({"every": 60, "timezone": "UTC", "end_at": 5}, "end_at must be an ISO 8601 string or null"),
        ({"every": 60, "timezone": "UTC", "start_at": "2026-01-01T00:00:00"}, "start_at must be an aware datetime"),
        (["every", 60], "must be an object"),
    ],
)
def test_from_json_refuses_what_is_not_a_spec(data: object, message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        ScheduleSpec.from_json(data)  # type: ignore[arg-type]


def test_tick_queries_refuse_naive_datetimes_and_negative_counts() -> None:
    spec = ScheduleSpec.build(every=60, timezone="UTC")
    with pytest.raises(ValueError, match="after must be an aware datetime"):
        spec.next_tick(NAIVE)
    with pytest.raises(ValueError, match="until must be an aware datetime"):
        spec.ticks(utc(2026, 1, 1), NAIVE, limit=5)
    with pytest.raises(ValueError, match="after must be an aware datetime"):
        spec.ticks(NAIVE, utc(2026, 1, 1), limit=0)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        spec.ticks(utc(2026, 1, 1), utc(2026, 1, 2), limit=-1)
    with pytest.raises(ValueError, match="count must be >= 0"):
        spec.upcoming(utc(2026, 1, 1), -1)
    with pytest.raises(ValueError, match="tick must be an aware datetime"):
        spec.jitter_for("s", NAIVE)


def test_cronsims_other_accepted_forms_build_and_tick_forward() -> None:
    for expression in ["*/15 9-17 * * 1-5", "0 0 L * *", "0 0 LW * *", "0 12 * * 5L", "0 0 1,15 JAN,JUL *"]:
        ticks = cron(expression).upcoming(utc(2026, 1, 1), 5)
        assert len(ticks) == 5 and ticks == sorted(set(ticks))
    assert cron("0 0 L 2 *").upcoming(utc(2027, 1, 1), 2) == [utc(2027, 2, 27, 23), utc(2028, 2, 28, 23)]
