from django.db import models


class Effect(models.Model):
    """One execution of a chaos activity, written by the activity itself (its side effect)."""

    key = models.CharField(max_length=200, db_index=True)
    attempt = models.PositiveIntegerField()
    pid = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)


class HandedOut(models.Model):
    """A task token an activity handed out to be finished later by the soak's driver."""

    key = models.CharField(max_length=200)
    attempt = models.PositiveIntegerField()
    token = models.TextField()
    # The driver's verdict on it: "" until tried, then "completed" or "not_pending".
    outcome = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
