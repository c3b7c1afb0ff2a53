import json
import uuid

from django.core.management.base import BaseCommand, CommandParser

import django_durable as durable
from demo_project.billing.workflows import subscription


class Command(BaseCommand):
    help = "Start the subscription workflow, wait for it (a durable_worker must be running), print the result."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--total", type=int, default=1200)
        parser.add_argument("--cycles", type=int, default=3)
        parser.add_argument("--cycle-seconds", type=float, default=1.0)
        parser.add_argument("--timeout", type=float, default=120.0)

    def handle(self, *args: object, **options: object) -> None:
        workflow_id = f"subscription-{uuid.uuid4().hex[:8]}"
        handle = durable.start_workflow(
            subscription,
            options["total"],
            options["cycles"],
            cycle_seconds=options["cycle_seconds"],
            workflow_id=workflow_id,
        )
        self.stdout.write(f"Started {workflow_id}; waiting for it to finish...")
        result = handle.result(timeout=float(options["timeout"]))  # type: ignore[arg-type]
        self.stdout.write(self.style.SUCCESS(f"Result: {json.dumps(result)}"))
        self.stdout.write("Variables (set_var):")
        self.stdout.write(json.dumps(handle.vars(), indent=2, default=str))
        self.stdout.write(f"History: {len(handle.history())} events")
        self.stdout.write(f"WORKFLOW_ID={workflow_id}")
