"""The durable state: instances, their append-only history, inboxes and claimable work."""

from __future__ import annotations

import datetime
import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .engine.events import ParentClosePolicy


class WorkflowStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    SUSPENDED = "suspended", _("Suspended")
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed")
    CANCELED = "canceled", _("Canceled")
    TERMINATED = "terminated", _("Terminated")
    CONTINUED_AS_NEW = "continued_as_new", _("Continued as new")


OPEN_STATUSES = (WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.SUSPENDED)
# A run's JSON columns, each up to PAYLOAD_MAX_BYTES: lists of runs defer them.
PAYLOAD_COLUMNS = ("input", "result", "error", "vars", "task_error")


class IdReusePolicy(models.TextChoices):
    """What ``start_workflow`` does when runs with the same workflow id exist."""

    ALLOW_DUPLICATE = "allow_duplicate", _("Allow once the previous run closed")
    ALLOW_DUPLICATE_FAILED_ONLY = "allow_duplicate_failed_only", _("Allow only if the previous run did not complete")
    REJECT_DUPLICATE = "reject_duplicate", _("Never reuse the id")
    TERMINATE_IF_RUNNING = "terminate_if_running", _("Terminate a running run, then start")


class WorkflowInstance(models.Model):
    """One run of a workflow. ``workflow_id`` is the user's id; ``run_id`` names the run."""

    workflow_id = models.CharField(max_length=255)
    run_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workflow_name = models.CharField(max_length=255)
    queue = models.CharField(max_length=255)
    status = models.CharField(max_length=20, choices=WorkflowStatus.choices, default=WorkflowStatus.PENDING)
    input = models.JSONField(default=dict, help_text="{'args': [...], 'kwargs': {...}}")
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    vars = models.JSONField(default=dict, blank=True, help_text="The latest set_var() values.")
    # Number of history events, i.e. the last event's seq; kept under the instance's row lock.
    history_length = models.PositiveIntegerField(default=0)
    waiting_on = models.CharField(max_length=500, blank=True)
    # The latest engine-level failure of a workflow task (e.g. non-determinism); cleared by progress.
    task_error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)  # the store passes its clock
    scheduled_start_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # A child workflow's parent run, the parent's durable call that started it, and
    # what happens to the child if the parent closes first.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    parent_task_id = models.PositiveIntegerField(null=True, blank=True)
    parent_close_policy = models.CharField(
        max_length=20, choices=[(policy.value, policy.name.title()) for policy in ParentClosePolicy], blank=True
    )
    continued_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="continued_as"
    )
    # A run started by ``WorkflowHandle.rerun()`` from a prefix of another run's history.
    rerun_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns")
    rerun_from_seq = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workflow_id"],
                condition=Q(status__in=OPEN_STATUSES),
                name="durable_one_open_run_per_workflow_id",
            )
        ]
        indexes = [
            models.Index(fields=["workflow_id", "-created_at"], name="durable_instance_wfid"),
            models.Index(fields=["status", "-created_at"], name="durable_instance_status"),
            models.Index(fields=["workflow_name", "-created_at"], name="durable_instance_name"),
            # The admin's unfiltered run list, newest first.
            models.Index(fields=["-created_at"], name="durable_instance_created"),
        ]
        ordering = ["-created_at"]
        permissions = [
            (
                "operate_workflowinstance",
                "Can signal, cancel, terminate, suspend, resume and retry workflow runs, and complete "
                "or fail their activities",
            )
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name} {self.workflow_id} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class HistoryEvent(models.Model):
    """An append-only record of what happened in a run, numbered 1, 2, 3, ... by ``seq``."""

    # No index of its own: durable_history_seq_unique (instance, seq) serves lookups by run,
    # and one index less is one write less for every event of every run.
    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="history", db_index=False)
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=40)
    name = models.CharField(max_length=255, blank=True)
    # The durable call's sequence number, for events that schedule or answer one.
    task_id = models.PositiveIntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    timestamp = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["instance", "seq"], name="durable_history_seq_unique")]
        ordering = ["instance", "seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} {self.name}".rstrip()


class InboxEvent(models.Model):
    """An event that reached a run (an activity result, a fired timer) not yet in its history.

    The next workflow task moves inbox events into history, in ``id`` order.
    """

    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="inbox")
    kind = models.CharField(max_length=40)
    name = models.CharField(max_length=255, blank=True)
    task_id = models.PositiveIntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    timestamp = models.DateTimeField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.name}".rstrip()


class WorkItemKind(models.TextChoices):
    WORKFLOW = "workflow", _("Workflow task")
    ACTIVITY = "activity", _("Activity task")
    TIMER = "timer", _("Timer")


class WorkItem(models.Model):
    """Claimable work: a run's workflow task, an activity attempt or a timer.

    Claimable when unleased, unparked and due. A claim sets ``lease_owner`` and
    ``lease_expires_at`` and bumps ``attempt``; every write that finishes the
    work is fenced on that owner and attempt.
    """

    kind = models.CharField(max_length=20, choices=WorkItemKind.choices)
    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="work_items")
    queue = models.CharField(max_length=255)
    name = models.CharField(max_length=255, blank=True)
    task_id = models.PositiveIntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    due_at = models.DateTimeField()
    attempt = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=255, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Engine-level failures of a workflow task; after too many the item is parked.
    failures = models.PositiveIntegerField(default=0)
    parked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.JSONField(null=True, blank=True)
    # Activities: what the latest heartbeat reported (kept for the next attempt) and when.
    heartbeat_details = models.JSONField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Activities: the attempt's function returned ResultPending; it is finished by task token.
    awaiting_completion = models.BooleanField(default=False)
    # Activities under a remote executor (Celery): when the worker last sent this item
    # to it; cleared when the item becomes due again, so it is sent once per attempt.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # Set by the store from the database's clock (schedule_to_close_timeout counts from it).
    created_at = models.DateTimeField(default=timezone.now)
    # Activities: the key their queue's key_concurrency limits (``call_activity(concurrency_key=)``).
    concurrency_key = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["instance"],
                condition=Q(kind="workflow"),
                name="durable_one_workflow_task_per_run",
            )
        ]
        indexes = [
            models.Index(
                fields=["kind", "queue", "due_at"],
                condition=Q(lease_owner__isnull=True, parked_at__isnull=True),
                name="durable_workitem_claimable",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(lease_owner__isnull=False),
                name="durable_workitem_leased",
            ),
        ]
        ordering = ["due_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.name} #{self.task_id or ''}".strip()


class WorkerHeartbeat(models.Model):
    """A ``durable_worker`` process, as it last reported itself (for the dashboard)."""

    name = models.CharField(max_length=255, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list)
    concurrency = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return self.name


class OverlapPolicy(models.TextChoices):
    """What a schedule does with a tick that falls while its previous run is still open."""

    SKIP = "skip", _("Skip the tick")
    BUFFER_ONE = "buffer_one", _("Start it when the previous run closes (one waits, more are skipped)")
    BUFFER_ALL = "buffer_all", _("Start each in turn as the previous run closes")
    ALLOW_ALL = "allow_all", _("Start it now, alongside")
    CANCEL_OTHER = "cancel_other", _("Cancel the previous run, start when it has closed")
    TERMINATE_OTHER = "terminate_other", _("Terminate the previous run, then start")


# ``Schedule`` has a field named ``timezone``, which hides the module in its class body.
_now = timezone.now


class Schedule(models.Model):
    """A workflow started on a cron expression or a fixed interval (``django_durable.schedules``).

    A worker fires a tick in one transaction that locks this row, creates the tick's run and
    moves ``next_tick_at`` on: each tick fires once, however many workers look at it.
    """

    schedule_id = models.CharField(max_length=200, unique=True)
    workflow_name = models.CharField(max_length=255)
    input = models.JSONField(default=dict, blank=True, help_text="{'args': [...], 'kwargs': {...}}")
    queue = models.CharField(max_length=255)
    # The specification (``schedules.spec.ScheduleSpec``): exactly one of cron and every.
    cron = models.CharField(max_length=255, blank=True)
    every = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds between ticks.")
    timezone = models.CharField(max_length=64)
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True)
    jitter = models.FloatField(null=True, blank=True, help_text="Seconds; each tick is delayed by up to this much.")
    overlap = models.CharField(max_length=20, choices=OverlapPolicy.choices, default=OverlapPolicy.SKIP)
    catchup_window = models.DurationField(default=datetime.timedelta(hours=1))
    paused = models.BooleanField(default=False)
    note = models.TextField(blank=True)
    # Declared in settings.DURABLE["SCHEDULES"]: the workers' sync creates, updates and deletes it.
    from_settings = models.BooleanField(default=False)
    # The next tick not yet processed, and when a worker acts on it (the tick plus its jitter,
    # or sooner to start a buffered run). Null while paused or once the schedule has ended.
    next_tick_at = models.DateTimeField(null=True, blank=True)
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_tick_at = models.DateTimeField(null=True, blank=True)
    # Ticks waiting for the previous run to close (buffer_one, buffer_all, cancel_other).
    buffered = models.JSONField(default=list, blank=True)
    # len(buffered), for the workers' look for schedules whose buffered tick may start.
    buffered_count = models.PositiveIntegerField(default=0, db_index=True)
    # The last runs started, newest first: {"workflow_id", "run_id", "tick", "reason", "started_at"}.
    recent_runs = models.JSONField(default=list, blank=True)
    # Indexed: deleting a run (purge, prune) finds the schedules that point at it.
    last_run = models.ForeignKey(WorkflowInstance, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    runs_started = models.PositiveBigIntegerField(default=0)
    ticks_skipped = models.PositiveBigIntegerField(default=0, help_text="Dropped by the overlap policy.")
    ticks_missed = models.PositiveBigIntegerField(default=0, help_text="Older than the catch-up window.")
    created_at = models.DateTimeField(default=_now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["next_fire_at"], name="durable_schedule_due")]
        ordering = ["schedule_id"]

    def __str__(self) -> str:
        return self.schedule_id


class QueueState(models.Model):
    """A queue's limits as the database enforces them (``django_durable.queues``).

    Workers lease the attempts of a limited queue only while they hold this row's lock (a
    plain ``FOR UPDATE``): counting a queue's leased attempts under SKIP LOCKED would let two
    workers take its last slot. The row also keeps the starts of the rate limit's window.
    Unlimited queues never touch it.
    """

    queue = models.CharField(max_length=255, unique=True)
    # An operator's override of the settings' limits (their shape), or None: the settings' own.
    limits = models.JSONField(null=True, blank=True)
    # When the latest attempts started (seconds since the epoch, the database's clock): the
    # rate limit's sliding window, pruned as it slides.
    recent_starts = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["queue"]
        verbose_name = "queue"
        permissions = [("override_queue_limits", "Can override a queue's limits")]

    def __str__(self) -> str:
        return self.queue
