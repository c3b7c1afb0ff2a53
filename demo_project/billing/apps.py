from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "demo_project.billing"
    label = "billing"
