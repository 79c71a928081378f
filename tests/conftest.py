"""What every test gets: an environment without GLOBALDNS_* variables (the developer's shell must not change a
result, and servers started by tests inherit it), and a warn_once memory of its own."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest

from globaldns import logs


@pytest.fixture(autouse=True)
def no_globaldns_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [name for name in os.environ if name.startswith("GLOBALDNS_")]:
        monkeypatch.delenv(variable)


@pytest.fixture(autouse=True)
def warned(monkeypatch: pytest.MonkeyPatch) -> OrderedDict[str, None]:
    """A fresh warn_once memory, so warnings of earlier tests do not count as seen."""
    fresh: OrderedDict[str, None] = OrderedDict()
    monkeypatch.setattr(logs, "_WARNED", fresh)
    return fresh
