from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/django_durable/workflowinstance/")),
    path("admin/", admin.site.urls),
    path("durable/api/", include("django_durable.api.urls")),
    # Log in and out links for the browsable API.
    path("api-auth/", include("rest_framework.urls")),
]
