"""`liqo-netagent serve` fails closed: every socket is bound before the agent touches the kernel, and
a start-up that fails after that withdraws the WireGuard peers before the error propagates (a
restored ACTIVE grant may have programmed them, and no agent would be left to fence them)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.netagent import agent as agent_mod
from services.netagent import main
from services.netagent.config import AgentConfig
from services.netagent.plan.role import Role


class Boom(Exception):
    pass


def _cfg(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        socket_path=str(tmp_path / "private" / "netagent.sock"),
        state_path=str(tmp_path / "private" / "state.json"),
        labeler_socket=str(tmp_path / "labeler" / "netagent.sock"),
        tunnel_socket=str(tmp_path / "tunnel" / "netagent.sock"),
        natmap_socket=str(tmp_path / "natmap" / "netagent.sock"),
    )


@pytest.mark.parametrize("broken", [False, True], ids=["agent-steps-work", "agent-steps-fail"])
def test_sockets_are_bound_first_and_a_failed_start_withdraws_the_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    cfg = _cfg(tmp_path)
    events: list[str] = []
    paths = [cfg.socket_path, cfg.labeler_socket, cfg.tunnel_socket, cfg.natmap_socket]

    class FailingAgent:
        started = False

        def __init__(self, *_a: object, **_k: object) -> None:
            pass

        def start(self) -> None:
            assert all(stat.S_ISSOCK(os.lstat(p).st_mode) for p in paths), "a socket bound after the kernel"
            events.append("kernel touched")  # e.g. a restored grant programmed the peers
            raise Boom("start-up failed after the kernel was touched")

        def set_role(self, role: Role, epoch: int, ttl: float, reason: str) -> None:
            events.append(f"set_role {role.value}")
            if broken:
                raise RuntimeError("the device is half made")

        def stop(self) -> None:
            events.append("agent stopped")
            if broken:
                raise RuntimeError("cannot join thread before it is started")

    monkeypatch.setattr(agent_mod, "Agent", FailingAgent)
    monkeypatch.setattr(agent_mod, "withdraw_peers", lambda c: events.append(f"withdrew {c.wg_device}"))
    with pytest.raises(Boom):
        main.serve(cfg)
    # Demoted first (no thread re-adds a peer), then stopped, then the device emptied, even when the
    # agent's own steps fail.
    assert events == ["kernel touched", "set_role standby", "agent stopped", f"withdrew {cfg.wg_device}"]


def test_a_socket_that_cannot_be_bound_stops_before_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(tmp_path)
    (tmp_path / "tunnel").write_text("not a directory")  # its socket cannot be created
    events: list[str] = []

    class Agent:
        def __init__(self, *_a: object, **_k: object) -> None:
            pass

        def start(self) -> None:
            events.append("kernel touched")

    monkeypatch.setattr(agent_mod, "Agent", Agent)
    monkeypatch.setattr(agent_mod, "withdraw_peers", lambda c: events.append("withdrew"))
    assert main.serve(cfg) == 1
    assert events == ["withdrew"]  # an earlier agent's peers, never a new start
    assert "refusing to start" in capsys.readouterr().err
