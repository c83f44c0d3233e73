"""Shared fixtures. End-to-end tests need root (namespaces, TAP devices).

scripts/test.sh (what CI runs) sets NETSTACK_TESTS_STRICT=1: a test skipped because
it needs root or the C fast path then fails instead, so a CI that quietly lost root
goes red rather than green with half the suite skipped; and it selects the "ci"
hypothesis profile (NETSTACK_HYPOTHESIS_PROFILE): derandomized, so a run is
reproducible and a failure is the code's, not the draw's.

Every test that drives a stack fails on an internal error: the dispatcher catches
every exception (a bug must not take the stack down) and only counts it, so without
this check a crash looks exactly like a drop. In-process stacks are checked through
their Stats; a netstack process through its API stats (when it has an API socket)
and its log.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from netstack.stack.stats import Stats
from tests.netns import KNOBS, World

STRICT = os.environ.get("NETSTACK_TESTS_STRICT") == "1"
# skips that mean "this machine cannot run the suite", failures under STRICT
STRICT_SKIPS = ("needs root", "C fast path not built", "needs etcd")

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("NETSTACK_HYPOTHESIS_PROFILE", "default"))

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr)
        if any(s in reason for s in STRICT_SKIPS):
            report.outcome = "failed"
            report.longrepr = f"NETSTACK_TESTS_STRICT=1 and the test was skipped: {reason}"


@pytest.fixture(autouse=True)
def no_internal_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Stats]]:
    """Fail the test if any Stats made during it counted an internal error."""
    made: list[Stats] = []
    real_init = Stats.__init__

    def init(self: Stats) -> None:
        real_init(self)
        made.append(self)

    monkeypatch.setattr(Stats, "__init__", init)
    yield made
    errors = [s.drops["internal_error"] for s in made if s.drops["internal_error"]]
    assert not errors, f"the stack counted internal errors {errors} (see the captured log)"


@pytest.fixture(autouse=True)
def no_inherited_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """netstack's developer knobs (NETSTACK_FASTPATH, ...) exported in the shell that
    runs pytest change nothing: a test that wants one sets it."""
    for name in KNOBS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    w = World()
    try:
        yield w
        w.assert_no_internal_errors()
    finally:
        w.close()
