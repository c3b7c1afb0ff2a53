"""The Django admin as the workflow debugger.

``instances`` registers the model admins and routes the debugger's pages:
``timetravel`` (variables as of any history event), ``actions`` (signal, cancel,
terminate, ...), ``dashboard`` (the operator's overview) and ``timeline`` (the
SVG picture of a run). ``schedules`` registers the schedules' admin, with its
forms (``schedule_forms``) and actions (``schedule_actions``). ``queues`` registers
the Queues page of flow control: each queue's work and limits, and their override.
"""

from . import instances, queues, schedules  # noqa: F401  (registers the model admins)
