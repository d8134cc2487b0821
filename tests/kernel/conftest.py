"""The kernel suite: tests run on kernel WireGuard inside one QEMU guest, reported here one by one.

This machine's kernel has no WireGuard module. `guest.suite` lists the pytest arguments of what runs
in a guest booted on Debian's kernel (sandbox/testkit/kernelguest.py). Here, on the host, that file
is collected: the guest's tests are collected in a subprocess (as the guest will see them) and each
becomes a `GuestTest` item. One guest boots for all the selected ones as soon as collection ends and
runs while the host's tests do (the machine is mostly idle during them); each item waits for it, then
passes, fails (with the guest's traceback and captured output, or the guest's console when it
never reported) or is skipped as its test did in the guest.

In the guest (LIQO_KERNEL_GUEST=1) the suite's tests are plain tests and `tests/kernel/report.py`
writes their results to the shared folder; tests/kernel/guest holds the tests that only make sense
there (on the host it is not collected).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox.testkit.kernelguest import BOOT_DIR, TOOLS, GuestRun, KernelGuest, RunningGuest, python_script

IN_GUEST = os.environ.get("LIQO_KERNEL_GUEST") == "1"
ROOT = Path(__file__).resolve().parents[2]
SHARE = BOOT_DIR / "run"  # the last run's shared folder (console, pytest log, results), kept to read
GUEST_TIMEOUT = 900.0
CONSOLE_TAIL = 6000

collect_ignore = [] if IN_GUEST else ["guest"]


@dataclass
class GuestResults:
    run: GuestRun | None
    phases: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str = ""  # why the guest could not run at all

    def diagnosis(self) -> str:
        if self.error:
            return self.error
        assert self.run is not None
        how = "timed out" if self.run.timed_out else f"exit status {self.run.returncode}"
        log = _read(SHARE / "pytest.log")
        return (f"guest run: {how} after {self.run.seconds:.0f} s\n--- guest pytest (tail) ---\n"
                f"{log[-CONSOLE_TAIL:]}\n--- guest console (tail) ---\n{self.run.console[-CONSOLE_TAIL:]}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        return f"<{e}>"


def suite_args(path: Path) -> list[str]:
    return [s for line in path.read_text().splitlines() if (s := line.strip()) and not s.startswith("#")]


def guest_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.kernel.report",
            "-q", "-rfE", "--durations=15", *args]


def collect_guest_ids(args: list[str]) -> list[str]:
    """The guest suite's test ids, collected here as the guest will (same tree, LIQO_KERNEL_GUEST)."""
    r = subprocess.run([*guest_argv(args), "--collect-only"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "LIQO_KERNEL_GUEST": "1"}, timeout=120, check=False)
    ids = [line for line in r.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if r.returncode != 0 or not ids:
        raise RuntimeError(f"collecting the guest suite failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return ids


def start_guest(guest_ids: list[str]) -> GuestResults | RunningGuest:
    """Boots the guest running `guest_ids`; GuestResults with the reason when it cannot."""
    if missing := [t for t in TOOLS if shutil.which(t) is None]:
        return GuestResults(None, error=f"missing tools: {', '.join(missing)} (run make install)")
    # The guest sees the tree read-only: what it would compile at every import is compiled here once.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", "services", "sandbox", "tests"],
                   cwd=ROOT, capture_output=True, check=False, timeout=300)
    shutil.rmtree(SHARE, ignore_errors=True)
    SHARE.mkdir(parents=True)
    env = {"LIQO_KERNEL_GUEST": "1", "LIQO_KERNEL_GUEST_REPORT": str(SHARE / "results.jsonl")}
    script = python_script(guest_argv(guest_ids), env, output=SHARE / "pytest.log")
    try:
        return KernelGuest().start(script, SHARE)
    except (OSError, RuntimeError) as e:
        return GuestResults(None, error=f"the guest could not boot: {e}")


def guest_results(started: GuestResults | RunningGuest) -> GuestResults:
    if isinstance(started, GuestResults):
        return started
    run = started.wait(GUEST_TIMEOUT)
    phases: dict[str, list[dict[str, Any]]] = defaultdict(list)
    report = SHARE / "results.jsonl"
    for line in report.read_text().splitlines() if report.exists() else []:
        result = json.loads(line)
        phases[result["nodeid"]].append(result)
    return GuestResults(run, dict(phases))


GUEST = pytest.StashKey[GuestResults | RunningGuest]()
RESULTS = pytest.StashKey[GuestResults]()


class GuestFailure(Exception):
    pass


class GuestTest(pytest.Item):
    """One test of the guest suite, as it ran in the guest."""

    def __init__(self, *, guest_id: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.guest_id = guest_id
        self.add_marker(pytest.mark.root)

    def runtest(self) -> None:
        stash = self.session.stash
        if RESULTS not in stash:
            stash[RESULTS] = guest_results(stash[GUEST])
        results = stash[RESULTS]
        phases = results.phases.get(self.guest_id)
        if not phases:
            raise GuestFailure(f"the guest reported no result for {self.guest_id}\n{results.diagnosis()}")
        failed = [p for p in phases if p["outcome"] == "failed"]
        if failed:
            raise GuestFailure("\n".join(
                f"--- in the guest, {p['when']} ---\n{p['longrepr']}\n"
                + "".join(f"--- {title} ---\n{text}\n" for title, text in p["sections"])
                for p in failed))
        if skipped := [p for p in phases if p["outcome"] == "skipped"]:
            pytest.skip(f"skipped in the guest: {skipped[0]['longrepr']}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GuestFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"[kernel guest] {self.guest_id}"


class GuestSuite(pytest.File):
    def collect(self) -> Iterator[GuestTest]:
        args = suite_args(self.path)
        for guest_id in collect_guest_ids(args):
            yield GuestTest.from_parent(self, name=guest_id, guest_id=guest_id)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> GuestSuite | None:
    if file_path.name == "guest.suite" and not IN_GUEST:
        return GuestSuite.from_parent(parent, path=file_path)
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    selected = [i.guest_id for i in session.items if isinstance(i, GuestTest)]
    if selected and os.geteuid() == 0 and not IN_GUEST:
        session.stash[GUEST] = start_guest(selected)


def pytest_sessionfinish(session: pytest.Session) -> None:
    started = session.stash.get(GUEST, None)
    if isinstance(started, RunningGuest):
        started.kill()  # a run stopped early (-x, ^C) leaves no QEMU behind
