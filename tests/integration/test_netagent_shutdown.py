"""The netagent's SIGTERM while ACTIVE: a pod deletion stops every container at once, and the labeler
may hand the Lease over at once only after setting its agent STANDBY. So an ACTIVE agent keeps serving
(at most --shutdown-grace) until its role is withdrawn; a STANDBY one stops at once."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import NetAgent, activate
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import generate

pytestmark = pytest.mark.root

GRACE = 2.0
SYS_TGKILL = 234  # x86_64


def sigterm_and_time_exit(agent: NetAgent, withdraw: bool) -> tuple[float, float | None]:
    """SIGTERM; with `withdraw`, then SetRole(STANDBY) over the labeler's socket as its release does.
    Returns (seconds until the process exited, seconds the STANDBY call took or None)."""
    assert agent.proc is not None
    labeler = agent.client("labeler", timeout=2, retry_deadline=0)
    try:
        t0 = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        took = None
        if withdraw:
            time.sleep(0.2)  # the signal has been handled: the agent drains
            t1 = time.monotonic()
            labeler.set_role(pb.ROLE_STANDBY, 1, 0, "released")
            took = time.monotonic() - t1
        assert agent.proc.wait(timeout=GRACE + 10) == 0
        return time.monotonic() - t0, took
    finally:
        labeler.close()


@pytest.mark.parametrize("case", ["active-withdrawn", "active-not-withdrawn", "standby"])
def test_sigterm_drains_an_active_agent_until_its_role_is_withdrawn(
    case: str, node_factory: Callable[[str], Node], tmp_path: Path,
) -> None:
    node = node_factory("drain")
    with NetAgent(node, tmp_path, args=("--shutdown-grace", str(GRACE))) as agent:
        if case != "standby":
            activate(agent, generate().private_key)
        exited, withdraw_took = sigterm_and_time_exit(agent, withdraw=case == "active-withdrawn")
    print(f"\n{case}: exited {exited:.2f}s after SIGTERM"
          + (f", SetRole(STANDBY) answered in {withdraw_took:.3f}s" if withdraw_took is not None else ""))
    if case == "active-withdrawn":
        assert withdraw_took is not None and withdraw_took < 1.0  # served while draining
        assert exited < GRACE  # stopped once withdrawn, not at the end of the grace
    elif case == "active-not-withdrawn":
        assert GRACE - 0.1 <= exited < GRACE + 3  # kept the dataplane's role for the whole grace
    else:
        assert exited < 1.5  # nothing to drain


def test_sigterm_delivered_to_another_thread_still_stops_the_agent(
    node_factory: Callable[[str], Node], tmp_path: Path,
) -> None:
    """A process-directed signal may land on any thread; Python runs the handler in the main thread,
    which must wake up for it. tgkill to a gRPC worker thread makes that case deterministic."""
    node = node_factory("tgkill")
    with NetAgent(node, tmp_path) as agent:
        assert agent.proc is not None
        pid = agent.proc.pid  # nsenter and setpriv exec: this is the agent's Python
        assert Path(f"/proc/{pid}/comm").read_text().startswith("python")
        others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
        assert others, "the agent runs threads"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(SYS_TGKILL, pid, others[-1], signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
        assert agent.proc.wait(timeout=5) == 0
