"""``manage.py durable_prune``: delete closed runs older than a retention, in batches."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_durable import operations
from django_durable.conf import durable_settings


class Command(BaseCommand):
    help = (
        "Delete closed workflow runs (completed, failed, canceled, terminated, continued as new) that "
        "closed longer ago than a retention, with their history, in batches of one short transaction "
        "each. Open runs are never touched, nor closed runs an open run still refers to (the parent of "
        "an open child, the run an open one continued from or reruns)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            metavar="DURATION",
            default=None,
            help="Retention: runs closed longer ago than this go, e.g. 30d, 12h, 90m or seconds "
            "(default: DURABLE['PRUNE_RETENTION'], 30d).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Runs deleted per transaction (default: DURABLE['PRUNE_BATCH_SIZE'], 500).",
        )
        parser.add_argument(
            "--workflow-name",
            action="append",
            default=[],
            dest="workflow_names",
            metavar="NAME",
            help="Only runs of this workflow type (may be repeated).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")
        parser.add_argument("--json", action="store_true", help="Print the counts as JSON.")

    def handle(self, *args: object, **options: Any) -> None:
        retention = options["older_than"]
        try:
            older_than = operations.parse_duration(durable_settings.PRUNE_RETENTION if retention is None else retention)
        except ValueError as exc:
            where = "--older-than" if retention is not None else "DURABLE['PRUNE_RETENTION']"
            raise CommandError(f"{where}: {exc}", returncode=2) from None
        batch_size = options["batch_size"] if options["batch_size"] is not None else durable_settings.PRUNE_BATCH_SIZE
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            where = "--batch-size" if options["batch_size"] is not None else "DURABLE['PRUNE_BATCH_SIZE']"
            raise CommandError(f"{where} must be a whole number of at least 1, not {batch_size!r}.", returncode=2)

        def progress(batch: int, counts: dict[str, int]) -> None:
            self.stdout.write(
                f"Batch {batch}: deleted {counts['runs']} run(s), {counts['history_events']} history events, "
                f"{counts['inbox_events']} inbox events, {counts['work_items']} work items."
            )

        result = operations.prune(
            older_than=older_than,
            batch_size=batch_size,
            workflow_names=options["workflow_names"],
            dry_run=options["dry_run"],
            on_batch=progress if options["verbosity"] >= 2 and not options["json"] else None,
        )
        if options["json"]:
            self.stdout.write(json.dumps({**result.as_dict(), "closed_before": result.closed_before.isoformat()}))
        else:
            self.stdout.write(self.style.SUCCESS(result.summary()))
