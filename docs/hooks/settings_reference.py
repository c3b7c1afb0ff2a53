"""MkDocs hook: the settings reference (``docs/settings.md``) rendered from ``django_durable.conf``.

In ``docs/settings.md``, what lies between ``MARKER`` and ``END_MARKER`` (a note for readers of
the raw file) is replaced at build time by a table of every setting of
``SETTINGS``, in its order, with the default and the description, so the page cannot drift
from the code. The build fails (``PluginError``) when a setting has no description, when a
description names a setting that does not exist (a Markdown code span of a name in capitals,
such as `HISTORY_MAX_EVENTS`, that is neither a django-durable setting nor one of Django's own
names), or when a page names ``DURABLE["X"]`` for an ``X`` that does not exist.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from django.conf import global_settings
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Importable before django.setup(): the hook needs neither configured settings nor a database.
from django_durable.conf import SETTINGS, Setting  # noqa: E402

MARKER = "<!-- settings-reference -->"
END_MARKER = "<!-- /settings-reference -->"
SETTINGS_PAGE = "settings.md"
CODE_NAME = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`")
PAGE_REFERENCE = re.compile(r"""DURABLE\[\s*["']([^"']*)["']\s*\]""")
# Django's own names a description may mention: its settings and the keys of a DATABASES entry.
DJANGO_NAMES = {name for name in dir(global_settings) if name.isupper()} | {"CONN_MAX_AGE", "CONN_HEALTH_CHECKS"}
DAY = 86400


def problems(settings: dict[str, Setting]) -> list[str]:
    """What keeps the reference from being complete and true; empty when it is."""
    found = []
    for name, setting in settings.items():
        if not isinstance(setting, Setting) or not isinstance(setting.doc, str) or not setting.doc.strip():
            found.append(f"{name} has no description")
            continue
        if "\n\n" in setting.doc.strip():
            found.append(f"{name}'s description is more than one paragraph")
        for named in CODE_NAME.findall(setting.doc):
            if named not in settings and named not in DJANGO_NAMES:
                found.append(f"{name}'s description names {named}, which is not a setting")
    return found


def default_text(name: str, value: Any) -> str:
    if isinstance(value, str):
        text = f'`"{value}"`'
    elif isinstance(value, bool) or value is None:
        text = f"`{value}`"
    elif isinstance(value, int):
        text = f"`{value:_}`" if value >= 10_000 else f"`{value}`"
    elif isinstance(value, float):
        text = f"`{value!r}`" if value < 10_000 else f"`{value:_.1f}`"
    elif isinstance(value, (list, tuple)):
        text = "`[" + ", ".join(f'"{item}"' if isinstance(item, str) else repr(item) for item in value) + "]`"
    else:
        text = f"`{value!r}`"
    if name.endswith(("_BYTES", "_BODY_SIZE")) and isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        kib = value // 1024
        text += f" ({kib // 1024} MiB)" if kib % 1024 == 0 else f" ({kib} KiB)"
    elif isinstance(value, float) and value >= DAY and value % DAY == 0:
        text += f" ({int(value // DAY)} days)"
    return text


def description_text(doc: str) -> str:
    linked = CODE_NAME.sub(lambda m: f"[`{m[1]}`](#{m[1]})" if m[1] in SETTINGS else m[0], doc.strip())
    return " ".join(linked.split()).replace("|", "\\|")


def settings_table(settings: dict[str, Setting]) -> str:
    rows = ["| setting (`DURABLE[...]`) | default | what it does |", "|---|---|---|"]
    for name, setting in settings.items():
        rows.append(
            f"| `{name}`{{#{name}}} | {default_text(name, setting.default)} | {description_text(setting.doc)} |"
        )
    return "\n".join(rows)


def on_config(config: Any) -> Any:
    if found := problems(SETTINGS):
        raise PluginError("The settings reference (django_durable/conf.py): " + "; ".join(found) + ".")
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    unknown = sorted({name for name in PAGE_REFERENCE.findall(markdown) if name not in SETTINGS})
    if unknown:
        raise PluginError(f"{page.file.src_uri} names DURABLE settings that do not exist: {', '.join(unknown)}.")
    if page.file.src_uri != SETTINGS_PAGE:
        return markdown
    if (
        markdown.count(MARKER) != 1
        or markdown.count(END_MARKER) != 1
        or markdown.index(MARKER) > markdown.index(END_MARKER)
    ):
        raise PluginError(f"{SETTINGS_PAGE} must hold {MARKER} ... {END_MARKER} once, where the settings table goes.")
    before, rest = markdown.split(MARKER)
    return before + settings_table(SETTINGS) + rest.split(END_MARKER)[1]
