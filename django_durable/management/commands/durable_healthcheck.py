"""``manage.py durable_healthcheck``: is the durable machinery healthy? For probes and monitoring."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from django_durable import operations


class Command(BaseCommand):
    help = (
        "Check that the database answers, django_durable's migrations are applied, workers are "
        "heartbeating, no work waits overdue and no schedule's tick is late. One line per check; "
        "exits 0 when healthy, 1 when "
        "not, 2 for bad arguments. Reads only, so it can serve as a liveness or readiness probe."
    )
    # A probe must be fast and must not fail on an unrelated system check.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stale-after",
            metavar="DURATION",
            default=None,
            help="A worker silent for longer is stale, not alive (default: "
            "DURABLE['HEALTH_WORKER_STALE_AFTER'], else 3 heartbeat intervals and at least 60s).",
        )
        parser.add_argument(
            "--overdue-after",
            metavar="DURATION",
            default=None,
            help="Unclaimed work due, or a lease expired, for longer is overdue (default: "
            "DURABLE['HEALTH_OVERDUE_AFTER'], 60s).",
        )
        parser.add_argument(
            "--schedule-late-after",
            metavar="DURATION",
            default=None,
            help="A schedule whose next tick has been due for longer is late: no worker fires it "
            "(default: DURABLE['HEALTH_SCHEDULE_LATE_AFTER'], 60s).",
        )
        parser.add_argument(
            "--min-workers",
            type=int,
            default=1,
            help="Alive workers needed to be healthy (default 1; 0 skips).",
        )
        parser.add_argument(
            "--queues",
            default=None,
            help="Comma-separated queues: count only workers serving one of them and work on them.",
        )
        parser.add_argument(
            "--hostname",
            default=None,
            help='Count only workers on this host (a worker pod\'s liveness probe: --hostname "$(hostname)").',
        )
        parser.add_argument(
            "--skip",
            action="append",
            default=[],
            choices=operations.CHECKS[1:],
            help="Leave out a check (may be repeated), e.g. --skip workers --skip overdue --skip schedules "
            "for a web pod.",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: object, **options: Any) -> None:
        limits = {}
        for key in operations.THRESHOLD_SETTINGS:
            try:
                if options[key] is None:
                    limits[key] = operations.default_threshold(key)
                else:
                    limits[key] = operations.parse_duration(options[key])
            except ValueError as exc:
                where = "" if options[key] is None else f"--{key.replace('_', '-')}: "
                raise CommandError(f"{where}{exc}", returncode=2) from None
        if options["min_workers"] < 0:
            raise CommandError("--min-workers cannot be negative.", returncode=2)
        queues = tuple(q.strip() for q in (options["queues"] or "").split(",") if q.strip())
        thresholds = operations.Thresholds(
            stale_after=limits["stale_after"],
            overdue_after=limits["overdue_after"],
            schedule_late_after=limits["schedule_late_after"],
            min_workers=options["min_workers"],
            queues=queues,
            hostname=options["hostname"],
        )
        report = operations.check_health(thresholds, skip=options["skip"])
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), cls=DjangoJSONEncoder, indent=2))
        else:
            for check in report.checks:
                line = check.line()
                self.stdout.write(self.style.ERROR(line) if check.status == operations.FAIL else line)
            summary = report.summary()
            self.stdout.write(self.style.SUCCESS(summary) if report.healthy else self.style.ERROR(summary))
        if not report.healthy:
            sys.exit(1)  # the report is the output, the status the verdict (as durable_replay)
