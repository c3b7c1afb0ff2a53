from django.db import models


class ActivityRun(models.Model):
    """One execution of a test activity, written by the activity itself (a side effect)."""

    key = models.CharField(max_length=200)
    attempt = models.PositiveIntegerField()
    pid = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
