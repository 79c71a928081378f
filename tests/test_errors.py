"""errors: one root that every exception of globaldns derives from, and a bare one says what went wrong."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import globaldns
from globaldns import errors
from globaldns.errors import GlobalDNSError


def our_exceptions() -> list[type[BaseException]]:
    """Every exception class defined anywhere in the package."""
    found = []
    for module in pkgutil.walk_packages(globaldns.__path__, "globaldns."):
        if module.name == "globaldns.__main__":
            continue  # it runs the command line when imported
        for _, value in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.name:
                found.append(value)
    return found


def test_the_package_has_exceptions_to_check():
    names = {error.__name__ for error in our_exceptions()}
    assert {"ConfigError", "UpstreamError", "Malformed", "Gone"} <= names


@pytest.mark.parametrize("error", our_exceptions(), ids=lambda error: f"{error.__module__}.{error.__name__}")
def test_every_exception_of_ours_derives_from_the_root(error: type[BaseException]):
    assert issubclass(error, GlobalDNSError)


@pytest.mark.parametrize("error", [errors.ConfigError, errors.SourceError, errors.UpstreamError, GlobalDNSError])
def test_a_bare_error_says_its_docstring(error: type[GlobalDNSError]):
    assert str(error()) == error.__doc__
    assert str(error("named")) == "named"
