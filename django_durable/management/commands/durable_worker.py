import logging
from typing import Any

from django.core import checks
from django.core.management.base import BaseCommand, CommandParser
from django.db import DEFAULT_DB_ALIAS

from django_durable.worker import Worker


class Command(BaseCommand):
    help = "Run a django-durable worker: claims and runs workflow tasks, activities and timers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues",
            default=None,
            help="Comma-separated queues to serve (default: the DEFAULT_QUEUE setting).",
        )
        parser.add_argument("--concurrency", type=int, default=None, help="Activity threads.")
        parser.add_argument(
            "--batch",
            action="store_true",
            help="Exit once no work is due (for cron and tests) instead of waiting for more.",
        )
        parser.add_argument("--name", default=None, help="Worker name recorded as lease owner.")

    def handle(self, *args: object, **options: Any) -> None:
        self._configure_logging(int(options["verbosity"]))
        # Django runs the database checks only under migrate and check --database; a setting
        # that would let workers run an activity twice must stop this one before it claims
        # anything (SystemCheckError: the messages, exit status 1). The store's database.
        self.check(tags=[checks.Tags.database], databases=[DEFAULT_DB_ALIAS])
        queues = [q.strip() for q in str(options["queues"]).split(",") if q.strip()] if options["queues"] else None
        Worker(
            queues=queues,
            concurrency=options["concurrency"],
            batch=bool(options["batch"]),
            name=options["name"],
        ).run()

    def _configure_logging(self, verbosity: int) -> None:
        level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
        logger = logging.getLogger("django_durable")
        logger.setLevel(level)
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
