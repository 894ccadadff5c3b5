"""SciPy's own convolve2d / correlate2d tests, run against cnnlab.conv with SciPy's assertions.

The installed SciPy ships its test suite. This module loads scipy/signal/tests/test_signaltools.py
from that file as a private module (the real scipy.signal stays untouched), points every name its
tests reach convolve2d and correlate2d through (the two module globals, `signal.` via a proxy
module, and the functions captured in `pytest.mark.parametrize` lists) at cnnlab's functions, and
collects here every test of that file that calls them: TestConvolve2d, TestCorrelate2d, and
TestFFTConvolve's test whose reference is convolve2d.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest
import scipy
from scipy import signal
from scipy._lib._array_api import array_namespace

from cnnlab.conv import convolve

SCIPY_TESTS = Path(scipy.__file__).parent / "signal" / "tests" / "test_signaltools.py"
SUBSTITUTES = {signal.convolve2d: convolve.convolve2d, signal.correlate2d: convolve.correlate2d}
# Marks that SciPy's conftest.py registers; its test module uses them at import time, which the
# project's --strict-markers refuses unless they are registered.
PARAMETER_SET = type(pytest.param(None))  # what pytest.param() returns
SCIPY_MARKERS = ("skip_xp_backends", "xfail_xp_backends", "xfail_on_32bit", "fail_slow")


class _SignalWithCnnlab(types.ModuleType):
    """scipy.signal as SciPy's tests see it: convolve2d and correlate2d are cnnlab's."""

    def __getattr__(self, name: str) -> object:
        return getattr(signal, name)


def _register_scipy_markers() -> None:
    # pytest gives a test module no public handle on the config at import time.
    config = getattr(pytest.mark, "_config", None)
    if config is None:
        return
    registered = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for name in SCIPY_MARKERS:
        if name not in registered:
            config.addinivalue_line("markers", f"{name}: used by SciPy's test_signaltools.py")


def _substitute(value: object) -> object:
    if isinstance(value, PARAMETER_SET):
        return value._replace(values=tuple(_substitute(item) for item in value.values))
    try:
        return SUBSTITUTES.get(value, value)
    except TypeError:  # unhashable parameter values are never one of the functions
        return value


def _substitute_in_parametrize(function: object) -> None:
    """Functions captured by @pytest.mark.parametrize at SciPy's import become cnnlab's."""
    marks = getattr(function, "pytestmark", [])
    replaced = []
    for mark in marks:
        if mark.name == "parametrize":
            argnames, argvalues = mark.args[0], mark.args[1]
            values = [_substitute(value) for value in argvalues]
            mark = pytest.mark.parametrize(argnames, values, *mark.args[2:], **mark.kwargs).mark
        replaced.append(mark)
    if marks:
        function.pytestmark = replaced


def _load_scipy_tests() -> types.ModuleType:
    _register_scipy_markers()
    spec = importlib.util.spec_from_file_location("cnnlab_scipy_signaltools_tests", SCIPY_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    proxy = _SignalWithCnnlab("scipy.signal")
    proxy.convolve2d, proxy.correlate2d = convolve.convolve2d, convolve.correlate2d
    module.signal = proxy
    module.convolve2d, module.correlate2d = convolve.convolve2d, convolve.correlate2d
    for test_class in (module.TestConvolve2d, module.TestCorrelate2d, module.TestFFTConvolve):
        for name, function in vars(test_class).items():
            if name.startswith("test_"):
                _substitute_in_parametrize(function)
    return module


scipy_tests = _load_scipy_tests()


@pytest.fixture
def xp() -> types.ModuleType:
    """SciPy's array-API fixture, NumPy only: what its conftest yields without SCIPY_ARRAY_API."""
    return array_namespace(np.empty(0))


class TestConvolve2d(scipy_tests.TestConvolve2d):
    """SciPy's TestConvolve2d, against cnnlab.conv.convolve.convolve2d."""


class TestCorrelate2d(scipy_tests.TestCorrelate2d):
    """SciPy's TestCorrelate2d, against cnnlab.conv.convolve.correlate2d."""


class TestFFTConvolveAgainstConvolve2d:
    """The one TestFFTConvolve test whose reference is convolve2d (now cnnlab's)."""

    test_random_data_multidim_axes = scipy_tests.TestFFTConvolve.test_random_data_multidim_axes


def test_scipy_tests_call_cnnlab():
    """Every way SciPy's tests reach convolve2d / correlate2d leads to cnnlab's functions."""
    assert scipy_tests.convolve2d is convolve.convolve2d
    assert scipy_tests.correlate2d is convolve.correlate2d
    assert scipy_tests.signal.convolve2d is convolve.convolve2d
    assert scipy_tests.signal.correlate2d is convolve.correlate2d
    assert scipy_tests.signal.fftconvolve is signal.fftconvolve  # the rest stays SciPy's
    assert signal.convolve2d is not convolve.convolve2d  # and the real scipy.signal is untouched
    parametrized = [
        list(mark.args[1])
        for mark in TestConvolve2d.test_same_with_boundary.pytestmark
        if mark.name == "parametrize" and mark.args[0] == "func"
    ]
    assert parametrized == [[convolve.convolve2d, convolve.correlate2d]]


def test_every_scipy_test_that_calls_them_is_collected():
    """No test of SciPy's file that calls convolve2d / correlate2d is left out of this module."""
    callers = set()
    owners = [("", vars(scipy_tests))] + [
        (name, vars(value))
        for name, value in vars(scipy_tests).items()
        if name.startswith("Test") and isinstance(value, type)
    ]
    for owner, members in owners:
        for name, function in members.items():
            code = getattr(function, "__code__", None)
            if name.startswith("test_") and code is not None:
                names = set(code.co_names)
                if names & {"convolve2d", "correlate2d"} or _parametrized_with_them(function):
                    callers.add((owner, name))
    here = {
        ("TestConvolve2d", name) for name in dir(TestConvolve2d) if name.startswith("test_")
    } | {("TestCorrelate2d", name) for name in dir(TestCorrelate2d) if name.startswith("test_")}
    here.add(("TestFFTConvolve", "test_random_data_multidim_axes"))
    assert callers <= here, callers - here
    assert ("TestConvolve2d", "test_same_with_boundary") in callers  # found by its parameters


def _parametrized_with_them(function: object) -> bool:
    for mark in getattr(function, "pytestmark", []):
        if mark.name == "parametrize":
            values = [getattr(value, "values", (value,)) for value in mark.args[1]]
            flat = [item for group in values for item in group]
            if any(
                item in (convolve.convolve2d, convolve.correlate2d)
                for item in flat
                if callable(item)
            ):
                return True
    return False


def test_scipy_skips_or_xfails_none_of_the_collected_tests_on_numpy():
    """The NumPy-only `xp` fixture above ignores SciPy's skip marks: none of them names numpy."""
    owners = [
        (TestConvolve2d, TestConvolve2d),
        (TestCorrelate2d, TestCorrelate2d),
        (TestFFTConvolveAgainstConvolve2d, scipy_tests.TestFFTConvolve),
    ]
    checked = 0
    for test_class, marked_class in owners:
        for name in dir(test_class):
            if not name.startswith("test_"):
                continue
            marks = getattr(getattr(test_class, name), "pytestmark", [])
            for mark in [*marks, *getattr(marked_class, "pytestmark", [])]:
                if mark.name in ("skip_xp_backends", "xfail_xp_backends"):
                    checked += 1
                    # Backends are named positionally; cpu_only and np_only spare numpy.
                    assert "numpy" not in mark.args, (name, mark)
    assert checked > 0
