"""Durable schedules: cron and intervals (issue 19); this package so far holds the specification only."""

from django_durable.schedules.spec import InvalidSchedule, ScheduleSpec, tick_workflow_id, trigger_workflow_id

__all__ = ["InvalidSchedule", "ScheduleSpec", "tick_workflow_id", "trigger_workflow_id"]
