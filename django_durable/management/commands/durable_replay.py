"""``manage.py durable_replay``: would the current code break the stored runs? Run it before a deploy."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_durable import registry, store
from django_durable.engine.failures import qualified_name
from django_durable.executors.replayer import replay_error


class Command(BaseCommand):
    help = (
        "Replay stored workflow histories against the current code, without running anything, "
        "and report the runs that would break (NonDeterminismError). Exits with status 1 if any "
        "would, so a deploy script can run it first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "workflow_names",
            nargs="*",
            metavar="workflow_name",
            help="Workflow types to check (default: every registered one).",
        )
        parser.add_argument(
            "--workflow-id",
            action="append",
            default=[],
            dest="workflow_ids",
            help="Only the runs of this workflow id (may be repeated).",
        )
        parser.add_argument(
            "--all",
            action="store_true",
            dest="include_closed",
            help="Check closed runs too, not only open (pending, running, suspended) ones.",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=None,
            help="Check at most this many runs of each workflow type, the newest first.",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: object, **options: Any) -> None:
        registered = registry.registered_workflows()
        names: list[str] = options["workflow_names"]
        unknown = sorted(set(names) - set(registered))
        if unknown:
            raise CommandError(
                f"No workflow is registered as {', '.join(map(repr, unknown))}. "
                f"Registered workflows: {', '.join(sorted(registered)) or 'none'}.",
                returncode=2,  # "could not check", told apart from 1, "would break"
            )
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1.", returncode=2)

        checked = 0
        broken: list[dict[str, Any]] = []
        skipped: dict[str, int] = {}
        runs = store.runs_to_replay(
            names=names,
            workflow_ids=options["workflow_ids"],
            include_closed=options["include_closed"],
            limit=options["limit"],
        )
        for run in runs:
            definition = registered.get(run["workflow_name"])
            if definition is None:
                skipped[run["workflow_name"]] = skipped.get(run["workflow_name"], 0) + 1
                continue
            checked += 1
            error = replay_error(
                definition.fn,
                workflow_id=run["workflow_id"],
                run_id=str(run["run_id"]),
                workflow_name=run["workflow_name"],
                queue=run["queue"],
                history=store.get_history(run["id"]),
            )
            if error is not None:
                failure = {"type": qualified_name(type(error)), "message": str(error)}
                broken.append({**report_fields(run), "error": failure})
            elif options["verbosity"] >= 2 and not options["json"]:
                self.stdout.write(f"{describe_run(run)}: replays")

        if options["json"]:
            report = {
                "checked": checked,
                "broken": len(broken),
                "skipped": sum(skipped.values()),
                "broken_runs": broken,
                "skipped_workflows": skipped,
            }
            self.stdout.write(json.dumps(report, indent=2))
        else:
            for broken_run in broken:
                error_type = broken_run["error"]["type"].rsplit(".", 1)[-1]
                self.stdout.write(f"{describe_run(broken_run)}: {error_type}: {broken_run['error']['message']}")
            for name, count in sorted(skipped.items()):
                self.stderr.write(f"Skipped {count} run(s) of {name!r}: no workflow is registered under that name.")
            summary = f"Checked {checked}, broken {len(broken)}, skipped {sum(skipped.values())}."
            self.stdout.write(self.style.ERROR(summary) if broken else self.style.SUCCESS(summary))
        if broken:
            sys.exit(1)  # like makemigrations --check: the report is the output, the status the verdict


def report_fields(run: store.RunToReplay) -> dict[str, str]:
    return {
        "workflow_id": run["workflow_id"],
        "run_id": str(run["run_id"]),
        "workflow_name": run["workflow_name"],
        "status": run["status"],
    }


def describe_run(run: Mapping[str, Any]) -> str:
    return f"{run['workflow_id']} (run {run['run_id']}, {run['workflow_name']}, {run['status']})"
