"""A pytest plugin for the guest's run (`-p tests.kernel.report`): each phase's result of each test
as one JSON line in $LIQO_KERNEL_GUEST_REPORT, for the host's `GuestTest` items."""

from __future__ import annotations

import json
import os

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    line = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
            "longrepr": report.longreprtext, "sections": [list(s) for s in report.sections],
            "duration": report.duration}
    with open(os.environ["LIQO_KERNEL_GUEST_REPORT"], "a") as f:
        f.write(json.dumps(line) + "\n")
