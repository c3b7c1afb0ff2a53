"""Task tokens: the capability to finish one activity attempt from anywhere.

A token is signed with Django's signing machinery (keyed by ``SECRET_KEY``) and
names the work item, the run, the activity and the attempt. It carries no
input. A forged or garbled token is rejected here, before any database access, and so
is one made longer ago than ``TASK_TOKEN_MAX_AGE`` seconds (the signature's timestamp).
"""

from __future__ import annotations

import dataclasses
import uuid

from django.core import signing

from .conf import durable_settings
from .exceptions import InvalidTaskToken

MAX_TOKEN_LENGTH = 1024
MAX_ID = 2**63 - 1  # the largest id or number any supported database stores


@dataclasses.dataclass(frozen=True)
class TaskToken:
    item_id: int
    run_id: str
    task_id: int
    attempt: int


def make_task_token(*, item_id: int, run_id: str, task_id: int, attempt: int) -> str:
    return signing.dumps(
        {"i": item_id, "r": str(run_id), "t": task_id, "a": attempt},
        salt=durable_settings.TASK_TOKEN_SALT,
    )


def read_task_token(token: object) -> TaskToken:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidTaskToken("The task token is missing, not a string, or too long.")
    max_age = durable_settings.TASK_TOKEN_MAX_AGE
    try:
        data = signing.loads(token, salt=durable_settings.TASK_TOKEN_SALT, max_age=max_age)
    except signing.SignatureExpired:
        raise InvalidTaskToken(
            f"The task token expired: it was made more than TASK_TOKEN_MAX_AGE ({max_age}) seconds ago."
        ) from None
    except (signing.BadSignature, ValueError, UnicodeError):
        raise InvalidTaskToken("The task token is garbled or its signature does not match.") from None
    if not isinstance(data, dict) or not isinstance(data.get("r"), str):
        raise InvalidTaskToken("The task token is not a django-durable task token.")
    try:
        parsed = TaskToken(item_id=data["i"], run_id=str(uuid.UUID(data["r"])), task_id=data["t"], attempt=data["a"])
    except (KeyError, ValueError):
        raise InvalidTaskToken("The task token is not a django-durable task token.") from None
    if not all(
        type(value) is int and 0 < value <= MAX_ID for value in (parsed.item_id, parsed.task_id, parsed.attempt)
    ):
        raise InvalidTaskToken("The task token is not a django-durable task token.")
    return parsed
