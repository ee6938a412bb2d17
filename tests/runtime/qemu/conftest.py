"""Fixtures of the QEMU tier: one guest boot per session, shared by every check."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from .guest import (
    TIMED_OUT,
    CheckResult,
    GuestLockup,
    GuestRun,
    parse_checks,
    run_guest,
)
from .guest_checks import all_checks

# The boots of this session, for the timing line in the terminal summary.
_SESSIONS: list[GuestSession] = []


@dataclass
class GuestSession:
    """The one boot of the session: the run itself and each check's result."""

    run: GuestRun
    checks: dict[str, CheckResult]


@pytest.fixture(scope="session")
def guest_session(tmp_path_factory: pytest.TempPathFactory) -> GuestSession:
    """Boot the guest once and run every check of `guest_checks.all_checks()`.

    `run_guest` kills QEMU before it returns or raises, on success, timeout,
    failure or interrupt alike; a boot that fails is reported to every test
    that asks for this fixture (pytest keeps the error for the session).
    """
    try:
        run = run_guest(all_checks(), tmp_path_factory.mktemp("qemu-guest"))
    except GuestLockup as exc:
        # The emulated guest's kernel, not a check, failed (see GuestLockup);
        # a second lockup fails the session like any other guest error.
        warnings.warn(
            f"the QEMU guest locked up; booting it again:\n{exc}", stacklevel=1
        )
        run = run_guest(all_checks(), tmp_path_factory.mktemp("qemu-guest"))
    session = GuestSession(run=run, checks=parse_checks(run.output))
    _SESSIONS.append(session)
    return session


@pytest.fixture
def guest_check(guest_session: GuestSession) -> Callable[..., CheckResult]:
    """Look up one check's result; fail with the guest's output if it did not run.

    `guest_check(name)` also fails the test when the check exited non-zero,
    unless `ok=False` is passed to look at a failure deliberately.
    """

    def lookup(name: str, ok: bool = True) -> CheckResult:
        result = guest_session.checks.get(name)
        if result is None:
            pytest.fail(
                f"check {name!r} has no result; the guest's output was:\n"
                f"{guest_session.run.output[-4000:]}"
            )
        if ok and result.status != 0:
            how = "timed out" if result.status in TIMED_OUT else "failed"
            pytest.fail(
                f"check {name!r} {how} (exit {result.status}) in the guest:\n"
                f"{result.output}"
            )
        return result

    return lookup


def pytest_terminal_summary(terminalreporter) -> None:
    """One line per boot: how long the guest took to boot and to run each check."""
    for session in _SESSIONS:
        checks = ", ".join(
            f"{name} {result.seconds:.1f}" for name, result in session.checks.items()
        )
        terminalreporter.write_line(
            f"qemu guest: boot {session.run.boot_seconds:.1f} s, "
            f"total {session.run.total_seconds:.1f} s; checks (s): {checks}"
        )
