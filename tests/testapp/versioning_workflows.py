"""Two versions of "the same" workflow, for the versioning tests (tests/test_versioning.py).

The deployed version is read from ``DURABLE_TEST_WORKFLOW_VERSION`` each time the
workflow code runs, not at import: a worker subprocess gets it from its environment
(that is the deploy), and a test can switch it in-process for ``durable_replay``.

- ``1``: open the account, wait for the ``verified`` event, activate.
- ``2``: a welcome email inserted before the wait, as a plain change; runs that were
  waiting under version 1 no longer replay.
- ``2-patched``: the same change behind ``ctx.patched(WELCOME_PATCH)``; runs recorded
  by version 1 keep the old path, new runs send the email.
- ``3``: the clean-up once no open run predates the patch: the ``patched()`` call and
  the old branch removed (the code of ``2`` again). Runs holding the marker replay.
"""

from __future__ import annotations

import os

import django_durable as durable

from .models import ActivityRun

VERSION_VARIABLE = "DURABLE_TEST_WORKFLOW_VERSION"
WELCOME_PATCH = "welcome-email"

__all__ = [
    "VERSION_VARIABLE",
    "WELCOME_PATCH",
    "activate_account",
    "open_account",
    "send_welcome_email",
    "versioned_reminder",
    "versioned_signup",
]


def deployed_version() -> str:
    return os.environ.get(VERSION_VARIABLE, "1")


def _record(key: str) -> None:
    ActivityRun.objects.create(key=key, attempt=durable.activity_info().attempt, pid=os.getpid())


@durable.activity
def open_account(user: str) -> str:
    _record(f"open_account:{user}")
    return f"account-{user}"


@durable.activity
def send_welcome_email(user: str) -> None:
    _record(f"send_welcome_email:{user}")


@durable.activity
def activate_account(account: str) -> str:
    _record(f"activate_account:{account}")
    return account


@durable.workflow
def versioned_signup(ctx: durable.WorkflowContext, user: str) -> dict:
    account = ctx.call_activity(open_account, user).result()
    version = deployed_version()
    welcomed = version in ("2", "3") or (version == "2-patched" and ctx.patched(WELCOME_PATCH))
    if welcomed:
        ctx.call_activity(send_welcome_email, user).result()
    ctx.wait_for_event("verified")
    return {"account": ctx.call_activity(activate_account, account).result(), "welcomed": welcomed}


@durable.workflow
def versioned_reminder(ctx: durable.WorkflowContext, user: str) -> str:
    """The same in every version."""
    ctx.wait_for_event("done")
    return user
