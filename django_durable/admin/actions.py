"""State-changing admin actions on a run: signal, cancel, terminate, suspend, resume,
retry a failed workflow task, rerun from an event, purge, and complete or fail an
activity that awaits completion by task token.

Each is offered only where the run's state allows it, and only to users with the
model permission the HTTP API needs for it (``django_durable.permissions``: rerun
needs ``add_``, purge ``delete_``, the others ``operate_workflowinstance``), checked
again when it is posted. A GET shows a confirmation form (``forms``); the POST acts
through ``django_durable.client`` (history rows are never touched here) and reports
with ``message_user``. The changelist's bulk actions are in ``bulk_actions``.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any, TypedDict

from django.contrib import messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from .. import registry, store
from ..client import WorkflowHandle, complete_activity_by_id, fail_activity_by_id
from ..exceptions import DurableError
from ..models import WorkflowInstance, WorkflowStatus, WorkItem, WorkItemKind
from ..permissions import OPERATE, may
from .forms import (
    ActionForm,
    CompleteActivityForm,
    FailActivityForm,
    RerunForm,
    SignalForm,
    SuspendForm,
    TerminateForm,
)


def can_operate(request: HttpRequest) -> bool:
    return request.user.has_perm(OPERATE)


# -- what a run allows now --------------------------------------------------------------


class WorkRow(TypedDict):
    """A run's work item as ``run_work`` reads it."""

    kind: str
    task_id: int | None
    name: str
    attempt: int
    lease_owner: str | None
    lease_expires_at: datetime.datetime | None
    failures: int
    parked_at: datetime.datetime | None


@dataclasses.dataclass
class RunWork:
    """The run's work items that decide what is legal: a failed workflow task waiting to
    be tried again, and activity attempts awaiting completion (by task id)."""

    failed_task: bool = False
    awaiting: dict[int, WorkRow] = dataclasses.field(default_factory=dict)


def run_work(instance: WorkflowInstance) -> RunWork:
    work = RunWork()
    if not instance.is_open:
        return work  # a closed run has no work items
    rows: QuerySet[WorkItem, WorkRow] = (
        WorkItem.objects.filter(instance_id=instance.pk)
        .filter(
            Q(kind=WorkItemKind.WORKFLOW)
            | Q(kind=WorkItemKind.ACTIVITY, awaiting_completion=True, lease_owner__isnull=False)
        )
        .values("kind", "task_id", "name", "attempt", "lease_owner", "lease_expires_at", "failures", "parked_at")
    )
    now = None
    for row in rows:
        if row["kind"] == WorkItemKind.WORKFLOW:
            # Unleased with failures: backing off or parked; retry() makes it due now.
            work.failed_task = row["lease_owner"] is None and row["failures"] > 0
            continue
        if row["lease_expires_at"] is not None:
            now = now or store.db_now()
            if row["lease_expires_at"] <= now:
                continue  # timed out, not reaped yet: a completion would be refused
        assert row["task_id"] is not None  # an activity's item has its task id
        work.awaiting[row["task_id"]] = row
    return work


def _awaiting_item(work: RunWork, activity: str | None) -> WorkRow | None:
    try:
        return work.awaiting.get(int(activity or ""))
    except ValueError:
        return None


# Each says why the action is not legal now, or None when it is.
Legality = Callable[[WorkflowInstance, RunWork, str | None], str | None]


def _status(instance: WorkflowInstance) -> str:
    return str(instance.get_status_display()).lower()


def _open(instance: WorkflowInstance, work: RunWork, activity: str | None) -> str | None:
    return None if instance.is_open else f"the run is {_status(instance)}"


def _closed(instance: WorkflowInstance, work: RunWork, activity: str | None) -> str | None:
    return f"the run is still {_status(instance)}" if instance.is_open else None


def _cancelable(instance: WorkflowInstance, work: RunWork, activity: str | None) -> str | None:
    if instance.is_open and instance.cancel_requested_at is not None:
        return "cancellation was already requested"
    return _open(instance, work, activity)


def _suspendable(instance: WorkflowInstance, work: RunWork, activity: str | None) -> str | None:
    if instance.status in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING):
        return None
    return f"the run is {_status(instance)}"


def _resumable(instance: WorkflowInstance, work: RunWork, activity: str | None) -> str | None:
    if instance.status == WorkflowStatus.SUSPENDED:
        return None
    return f"the run is {_status(instance)}, not suspended"


def _retryable(instance: WorkflowInstance, work: RunWork, activity: str | None) -> str | None:
    if instance.status == WorkflowStatus.SUSPENDED:
        return "the run is suspended (resuming it tries its workflow task again)"
    if not instance.is_open:
        return _open(instance, work, activity)
    return None if work.failed_task else "no failed workflow task is waiting"


def _rerunnable(instance: WorkflowInstance, work: RunWork, activity: str | None) -> str | None:
    if registry.is_internal(instance.workflow_name):  # never started from here, by anyone
        return f"no workflow is registered as {instance.workflow_name!r}"
    if not instance.is_open and instance.history_length < 2:
        return "its history is too short"
    return _closed(instance, work, activity)


def _awaiting(instance: WorkflowInstance, work: RunWork, activity: str | None) -> str | None:
    if not activity:
        return "no activity was named"
    if _awaiting_item(work, activity) is None:
        return f"activity {activity!r} of this run is not awaiting completion"
    return None


# -- performing --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    message: str
    level: int = messages.SUCCESS
    goto: int | str = "change"  # the run's change page, "changelist", or another run's pk


def _handle(instance: WorkflowInstance) -> WorkflowHandle:
    return WorkflowHandle(instance.workflow_id, str(instance.run_id))


def _name(instance: WorkflowInstance) -> str:
    return f"workflow {instance.workflow_id!r} (run {instance.run_id})"


Data = dict[str, Any]  # the action form's cleaned_data
Item = WorkRow | None  # the awaiting activity's work item, for the per-activity actions


def _signal(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    _handle(instance).signal(data["name"], data["payload"])
    return Outcome(f"Sent the event {data['name']!r} to {_name(instance)}.")


def _cancel(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    _handle(instance).cancel()
    return Outcome(f"Asked {_name(instance)} to cancel.")


def _terminate(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    _handle(instance).terminate(data["reason"])
    return Outcome(f"Terminated {_name(instance)}.")


def _suspend(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    _handle(instance).suspend(data["reason"])
    return Outcome(f"Suspended {_name(instance)}.")


def _resume(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    _handle(instance).resume()
    return Outcome(f"Resumed {_name(instance)}.")


def _retry(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    if _handle(instance).retry():
        return Outcome(f"The workflow task of {_name(instance)} is due again now.")
    return Outcome(f"No failed workflow task of {_name(instance)} was waiting; nothing changed.", messages.WARNING)


def _rerun(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    new = _handle(instance).rerun(data["from_event"], workflow_id=data["workflow_id"] or None)
    return Outcome(
        f"Started run {new.run_id} of workflow {new.workflow_id!r} from event {data['from_event']} "
        f"of run {instance.run_id}.",
        goto=WorkflowInstance.objects.values_list("pk", flat=True).get(run_id=new.run_id),
    )


def _purge(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    _handle(instance).purge()
    return Outcome(f"Purged {_name(instance)} with its history.", goto="changelist")


def _complete(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    assert item is not None  # a per-activity action: action_view found the activity
    complete_activity_by_id(instance.workflow_id, str(item["task_id"]), data["result"], run_id=str(instance.run_id))
    return Outcome(f"Completed activity {item['task_id']} ({item['name']}) of {_name(instance)}.")


def _fail(instance: WorkflowInstance, data: Data, item: Item) -> Outcome:
    assert item is not None  # a per-activity action: action_view found the activity
    error: dict[str, Any] = {"message": data["message"], "type": data["type"] or "ActivityFailure"}
    if data["details"] is not None:
        error["details"] = data["details"]
    fail_activity_by_id(instance.workflow_id, str(item["task_id"]), error, run_id=str(instance.run_id))
    return Outcome(
        f"Failed activity {item['task_id']} ({item['name']}) of {_name(instance)}; "
        "its retry policy decides what follows."
    )


@dataclasses.dataclass(frozen=True)
class Verb:
    label: str
    doing: str  # completes "Cannot ... <the run>"
    description: str
    form: type[ActionForm]
    legal: Legality
    perform: Callable[[WorkflowInstance, Data, Item], Outcome]
    per_activity: bool = False
    destructive: bool = False


VERBS: dict[str, Verb] = {
    "signal": Verb(
        "Signal",
        "signal",
        "Send an external event to the run; it reads it with ctx.wait_for_event(name), now or "
        "whenever it next waits for that event.",
        SignalForm,
        _open,
        _signal,
    ),
    "cancel": Verb(
        "Request cancel",
        "ask to cancel",
        "Ask the run to cancel. Its code sees CancelledError at its next durable call and may clean "
        "up first; running activities learn of it on their next heartbeat.",
        ActionForm,
        _cancelable,
        _cancel,
    ),
    "terminate": Verb(
        "Terminate",
        "terminate",
        "Close the run now. No more workflow code runs; its pending activities and timers are "
        "dropped and its children follow their parent-close policy.",
        TerminateForm,
        _open,
        _terminate,
        destructive=True,
    ),
    "suspend": Verb(
        "Suspend",
        "suspend",
        "Pause the run: no workflow code runs and no new activity starts until it is resumed. "
        "Events that arrive meanwhile are kept.",
        SuspendForm,
        _suspendable,
        _suspend,
    ),
    "resume": Verb(
        "Resume",
        "resume",
        "Let the suspended run go on from where it stood.",
        ActionForm,
        _resumable,
        _resume,
    ),
    "retry": Verb(
        "Retry workflow task",
        "retry the workflow task of",
        "Run the workflow task that failed (and is backing off or parked) again now, say after a "
        "deploy fixed the code.",
        ActionForm,
        _retryable,
        _retry,
    ),
    "rerun": Verb(
        "Rerun from an event",
        "rerun",
        "Start a new run from a prefix of this run's history: the events before the chosen one are "
        "kept, and the current code goes on from there. This run stays as it is.",
        RerunForm,
        _rerunnable,
        _rerun,
    ),
    "purge": Verb(
        "Purge",
        "purge",
        "Delete this closed run with its whole history. This cannot be undone.",
        ActionForm,
        _closed,
        _purge,
        destructive=True,
    ),
    "complete": Verb(
        "Complete activity",
        "complete an activity of",
        "Finish the activity attempt that awaits completion with this result, as the holder of its task token would.",
        CompleteActivityForm,
        _awaiting,
        _complete,
        per_activity=True,
    ),
    "fail": Verb(
        "Fail activity",
        "fail an activity of",
        "Fail the activity attempt that awaits completion; its retry policy decides whether another attempt follows.",
        FailActivityForm,
        _awaiting,
        _fail,
        per_activity=True,
        destructive=True,
    ),
}


# -- views -------------------------------------------------------------------------------

_PREFIX = f"{WorkflowInstance._meta.app_label}_{WorkflowInstance._meta.model_name}"


def _change_url(model_admin: Any, pk: Any) -> str:
    return reverse(f"admin:{_PREFIX}_change", args=(quote(pk),), current_app=model_admin.admin_site.name)


def action_url(pk: Any, verb: str, *, activity: int | None = None, current_app: str | None = None) -> str:
    url = reverse(f"admin:{_PREFIX}_action", args=(quote(pk), verb), current_app=current_app)
    return url if activity is None else f"{url}?activity={activity}"


def object_actions(request: HttpRequest, instance: Any) -> list[dict[str, str]]:
    """The actions ``request.user`` may take on ``instance`` now: ``{"verb", "label", "url"}``."""
    permitted = {verb: spec for verb, spec in VERBS.items() if may(request.user, verb)}
    if not permitted:
        return []
    work = run_work(instance)
    current_app = getattr(request, "current_app", None)
    found = []
    for verb, spec in permitted.items():
        if spec.per_activity:
            for task_id, item in sorted(work.awaiting.items()):
                found.append(
                    {
                        "verb": verb,
                        "label": f"{spec.label} {task_id} ({item['name']})",
                        "url": action_url(instance.pk, verb, activity=task_id, current_app=current_app),
                    }
                )
        elif spec.legal(instance, work, None) is None:
            url = action_url(instance.pk, verb, current_app=current_app)
            found.append({"verb": verb, "label": spec.label, "url": url})
    return found


def action_view(model_admin: Any, request: HttpRequest, object_id: str, verb: str) -> HttpResponse:
    spec = VERBS.get(verb)
    if spec is None:
        raise Http404(f"No admin action {verb!r}.")
    if not (model_admin.has_view_permission(request) and may(request.user, verb)):
        raise PermissionDenied
    request.current_app = model_admin.admin_site.name
    instance = model_admin.get_object(request, unquote(object_id))
    if instance is None:
        raise Http404("No such workflow run.")
    activity = request.GET.get("activity")
    work = run_work(instance)
    change_url = _change_url(model_admin, instance.pk)
    # Checked on POST too: the run may have moved on since the page was shown.
    refusal = spec.legal(instance, work, activity)
    if refusal is not None:
        message = f"Cannot {spec.doing} {_name(instance)}: {refusal}."
        model_admin.message_user(request, message, messages.ERROR)
        return HttpResponseRedirect(change_url)
    item = _awaiting_item(work, activity) if spec.per_activity else None

    if request.method == "POST":
        form = spec.form(request.POST, instance=instance, user=request.user)
        if form.is_valid():
            try:
                outcome = spec.perform(instance, form.cleaned_data, item)
            except DurableError as exc:  # the store's own check, e.g. the state changed meanwhile
                model_admin.message_user(
                    request, f"Cannot {spec.doing} {_name(instance)}: {exc.detail}", messages.ERROR
                )
                return HttpResponseRedirect(change_url)
            model_admin.message_user(request, outcome.message, outcome.level)
            if outcome.goto == "changelist":
                return HttpResponseRedirect(
                    reverse(f"admin:{_PREFIX}_changelist", current_app=model_admin.admin_site.name)
                )
            if outcome.goto != "change":
                return HttpResponseRedirect(_change_url(model_admin, outcome.goto))
            return HttpResponseRedirect(change_url)
    else:
        form = spec.form(instance=instance, user=request.user)

    opts = model_admin.opts
    label = f"{spec.label} {item['task_id']} ({item['name']})" if item else spec.label
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{label}: {instance.workflow_name} {instance.workflow_id}",
        "opts": opts,
        "app_label": opts.app_label,
        "object": instance,
        "verb": verb,
        "label": label,
        "description": spec.description,
        "destructive": spec.destructive,
        "form": form,
        "activity": item,
        "change_url": change_url,
        "action_url": request.get_full_path(),
        "media": model_admin.media + form.media,
    }
    return TemplateResponse(
        request,
        [
            f"admin/{opts.app_label}/{opts.model_name}/action_{verb}.html",
            f"admin/{opts.app_label}/{opts.model_name}/action_form.html",
        ],
        context,
    )


# -- changelist bulk actions ----------------------------------------------------------------
