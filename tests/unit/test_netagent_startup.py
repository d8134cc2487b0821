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


def test_sockets_are_bound_first_and_a_failed_start_withdraws_the_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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

        def stop(self) -> None:
            events.append("agent stopped")

    monkeypatch.setattr(agent_mod, "Agent", FailingAgent)
    monkeypatch.setattr(agent_mod, "withdraw_peers", lambda c: events.append(f"withdrew {c.wg_device}"))
    with pytest.raises(Boom):
        main.serve(cfg)
    assert events == ["kernel touched", "agent stopped", f"withdrew {cfg.wg_device}"]


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
