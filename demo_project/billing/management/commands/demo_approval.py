import email
import email.policy
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

import django_durable as durable
from demo_project.billing.workflows import approval

TOKEN = re.compile(r'"task_token": "([^"]+)"')


class Command(BaseCommand):
    help = (
        "Start the approval workflow; its activity 'emails' (to EMAIL_FILE_PATH) a curl command "
        "that completes it by task token. With --approve, run that request against the server."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--approve", action="store_true", help="Send the approval over HTTP.")
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args: object, **options: object) -> None:
        workflow_id = f"approval-{uuid.uuid4().hex[:8]}"
        handle = durable.start_workflow(approval, "invoice-42.pdf", "boss@example.com", workflow_id=workflow_id)
        self.stdout.write(f"Started {workflow_id}; waiting for its approval email...")
        token = self._token_from_outbox(workflow_id, float(options["timeout"]))  # type: ignore[arg-type]
        url = f"{settings.DEMO_BASE_URL}/durable/api/activities/complete/"
        self.stdout.write("The approver's email says:")
        self.stdout.write(
            f"  curl -X POST {url} -H 'Content-Type: application/json' \\\n"
            f'    -d \'{{"task_token": "{token}", "result": {{"approved": true}}}}\''
        )
        if not options["approve"]:
            self.stdout.write("Run it to approve; this waits for the workflow to finish.")
        else:
            body = json.dumps({"task_token": token, "result": {"approved": True}}).encode()
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                self.stdout.write(f"POST {url} -> {response.status} {response.read().decode()}")
        result = handle.result(timeout=float(options["timeout"]))  # type: ignore[arg-type]
        self.stdout.write(self.style.SUCCESS(f"Result: {json.dumps(result)}"))
        self.stdout.write(f"WORKFLOW_ID={workflow_id}")

    def _token_from_outbox(self, workflow_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for subject, body in _outbox(Path(settings.EMAIL_FILE_PATH)):
                found = TOKEN.search(body)
                if f"[{workflow_id}]" in subject and found:
                    return found.group(1)
            time.sleep(0.2)
        raise CommandError("No approval email arrived; is a durable_worker running?")


def _outbox(folder: Path) -> Iterator[tuple[str, str]]:
    """The subject and decoded text of each message the file-based email backend wrote
    (the body may be quoted-printable, its long lines folded: Django 6 does that)."""
    for path in folder.glob("*.log") if folder.exists() else []:
        for chunk in path.read_text().split("\n" + "-" * 79 + "\n"):
            if not chunk.strip():
                continue
            message = email.message_from_string(chunk.lstrip(), policy=email.policy.default)
            body = message.get_body(("plain",)) if isinstance(message, EmailMessage) else None
            if body is not None:
                yield str(message.get("Subject", "")), body.get_content()
