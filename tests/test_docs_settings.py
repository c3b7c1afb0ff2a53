"""The settings reference (docs/settings.md) is generated from conf.py: every setting must carry its description."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from django_durable.conf import DEFAULTS, SETTINGS, Setting, durable_settings

pytestmark = pytest.mark.engine

HOOK = Path(__file__).resolve().parent.parent / "docs" / "hooks" / "settings_reference.py"


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_reference_hook", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_has_a_description() -> None:
    assert list(DEFAULTS) == list(SETTINGS)
    missing = [name for name in DEFAULTS if not SETTINGS[name].doc.strip()]
    assert missing == []


def test_the_defaults_are_the_settings_defaults() -> None:
    assert DEFAULTS == {name: setting.default for name, setting in SETTINGS.items()}
    assert durable_settings.defaults is DEFAULTS


def test_the_docs_hook_finds_no_problem_and_renders_every_setting() -> None:
    hook = load_hook()
    assert hook.problems(SETTINGS) == []
    table = hook.settings_table(SETTINGS)
    for name in SETTINGS:
        assert f"| `{name}`{{#{name}}} |" in table


def test_the_docs_hook_refuses_a_missing_description_and_an_unknown_name() -> None:
    hook = load_hook()
    broken = {
        **SETTINGS,
        "UNDESCRIBED": Setting(1, "  "),
        "MISNAMED": Setting(1, "Below `LEASE_SECONDS`, unlike `SECRET_KEY` and `NO_SUCH_SETTING`."),
    }
    assert hook.problems(broken) == [
        "UNDESCRIBED has no description",
        "MISNAMED's description names NO_SUCH_SETTING, which is not a setting",
    ]
