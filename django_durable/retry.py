"""Retry policies for activities (the same shape as Temporal's)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .engine.failures import qualified_name


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | None = None
    maximum_attempts: int = 0  # 0: unlimited
    # Exception classes or their names ("ValueError", "billing.errors.CardDeclined").
    non_retryable_errors: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.initial_interval < 0 or self.backoff_coefficient < 1 or self.maximum_attempts < 0:
            raise ValueError(
                "RetryPolicy needs initial_interval >= 0, backoff_coefficient >= 1 and "
                "maximum_attempts >= 0 (0 means unlimited)."
            )
        names = tuple(e if isinstance(e, str) else qualified_name(e) for e in self.non_retryable_errors)
        object.__setattr__(self, "non_retryable_errors", names)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = self.initial_interval * self.backoff_coefficient ** (attempt - 1)
        # Like Temporal, an unset maximum is 100 times the initial interval.
        cap = self.maximum_interval if self.maximum_interval is not None else 100 * self.initial_interval
        return min(delay, cap)

    def allows_retry(self, attempt: int, error_type: str, error_mro: tuple[str, ...] = ()) -> bool:
        if self.maximum_attempts and attempt >= self.maximum_attempts:
            return False
        return not is_non_retryable(self.non_retryable_errors, (error_type, *error_mro))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"non_retryable_errors": list(self.non_retryable_errors)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetryPolicy:
        return cls(**{**data, "non_retryable_errors": tuple(data.get("non_retryable_errors", ()))})


def is_non_retryable(configured: tuple[str, ...], error_types: tuple[str, ...]) -> bool:
    """A configured name matches a qualified type name or its bare class name."""
    for error_type in error_types:
        bare = error_type.rpartition(".")[2]
        if error_type in configured or bare in configured or f"builtins.{error_type}" in configured:
            return True
    return False
