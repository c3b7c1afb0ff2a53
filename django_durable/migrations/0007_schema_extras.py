"""What the models declare that a database does not get from Django's migrations: on MySQL and
MariaDB, the conditional unique constraints and the claim index, and on MariaDB JSON columns that
hold any depth (see ``MySQLDialect.schema_extras``). Nothing elsewhere."""

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


def create(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    from django_durable.store.dialects import dialect_for

    for extra in dialect_for(schema_editor.connection).schema_extras():
        schema_editor.execute(extra.create)


def drop(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    from django_durable.store.dialects import dialect_for

    for extra in reversed(dialect_for(schema_editor.connection).schema_extras()):
        schema_editor.execute(extra.drop)


class Migration(migrations.Migration):
    # MySQL cannot roll DDL back, and Django refuses DDL in a transaction there.
    atomic = False
    dependencies = [
        ("django_durable", "0006_operate_permission_description"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]
