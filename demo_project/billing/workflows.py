"""The subscription workflow of the Go framework's README, as a Django durable workflow.

``total`` is billed in ``cycles`` equal parts, one every ``cycle_seconds``
from the start. A failed payment carries its amount over to the next cycle.
"""

from __future__ import annotations

import datetime
import random

import django_durable as durable


class PaymentFailed(Exception):
    pass


@durable.activity(retry=durable.RetryPolicy(initial_interval=0.2, maximum_attempts=2))
def charge(amount: int) -> str:
    """Charge the customer. A stand-in for a payment provider that fails now and then."""
    if random.random() < 0.3:
        raise PaymentFailed(f"payment of {amount} declined")
    return f"receipt-{durable.activity_info().workflow_id}-{amount}"


def payment_amounts(total: int, cycles: int) -> list[int]:
    base, extra = divmod(total, cycles)
    return [base + (1 if cycle < extra else 0) for cycle in range(cycles)]


@durable.workflow
def subscription(ctx: durable.WorkflowContext, total: int, cycles: int, cycle_seconds: float = 2.0) -> dict:
    amounts = payment_amounts(total, cycles)
    paid = overdue = 0
    for cycle in range(cycles):
        ctx.set_var("paid", paid)
        ctx.set_var("overdue", overdue)
        ctx.set_var("current_cycle", cycle)
        amount_due = amounts[cycle] + overdue
        ctx.set_var("amount_to_pay", amount_due)
        ctx.sleep_until(ctx.started_at + datetime.timedelta(seconds=cycle_seconds * (cycle + 1)))
        try:
            receipt = ctx.call_activity(charge, amount_due).result()
        except durable.ActivityError as exc:
            overdue = amount_due
            ctx.set_var(f"cycle_{cycle}_error", exc.message)
        else:
            paid += amount_due
            overdue = 0
            ctx.set_var(f"cycle_{cycle}_paid", {"amount": amount_due, "receipt": receipt})
        ctx.set_var("amount_to_pay", 0)
        ctx.set_var(f"cycle_{cycle}_completed_at", ctx.now())
    ctx.set_var("paid", paid)
    ctx.set_var("overdue", overdue)
    ctx.set_var("current_cycle", cycles)
    return {"paid": paid, "overdue": overdue}


# -- an approval that waits for a human, finished over HTTP by task token --------------


@durable.activity
def request_approval(document: str, approver: str) -> None:
    """'Email' the approver a link carrying the task token, then wait for their answer."""
    from django.conf import settings
    from django.core.mail import send_mail

    info = durable.activity_info()
    token = info.task_token
    url = f"{settings.DEMO_BASE_URL}/durable/api/activities/complete/"
    send_mail(
        subject=f"Please approve {document} [{info.workflow_id}]",
        message=(
            f"{document} needs your approval. To approve it:\n\n"
            f"curl -X POST {url} -H 'Content-Type: application/json' \\\n"
            f'  -d \'{{"task_token": "{token}", "result": {{"approved": true}}}}\'\n'
        ),
        from_email="workflows@example.com",
        recipient_list=[approver],
    )
    raise durable.ResultPending()


@durable.activity
def publish(document: str) -> str:
    return f"{document} published"


@durable.workflow
def approval(ctx: durable.WorkflowContext, document: str, approver: str) -> dict:
    ctx.set_var("state", "waiting for approval")
    decision = ctx.call_activity(request_approval, document, approver).result()
    ctx.set_var("decision", decision)
    if not decision.get("approved"):
        ctx.set_var("state", "rejected")
        return {"published": False, "decision": decision}
    outcome = ctx.call_activity(publish, document).result()
    ctx.set_var("state", "published")
    return {"published": True, "outcome": outcome}
