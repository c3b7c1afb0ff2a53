"""URLs of the HTTP API: ``path("durable/api/", include("django_durable.api.urls"))``.

The URL names live in the ``durable_api`` namespace, e.g.
``reverse("durable_api:activity-complete")``, ``reverse("durable_api:workflow-detail", args=[id])`` and
``reverse("durable_api:schedule-detail", args=[id])``.
"""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import schedules, views

app_name = "durable_api"

router = SimpleRouter()
router.register("workflows", views.WorkflowViewSet, basename="workflow")
router.register("schedules", schedules.ScheduleViewSet, basename="schedule")

urlpatterns = [
    path("activities/complete/", views.CompleteActivityView.as_view(), name="activity-complete"),
    path("activities/fail/", views.FailActivityView.as_view(), name="activity-fail"),
    path("activities/heartbeat/", views.HeartbeatActivityView.as_view(), name="activity-heartbeat"),
    *router.urls,
]

urlpatterns.append(path("schema/", views.SchemaView.as_view(patterns=list(urlpatterns)), name="schema"))
