"""Ports on a hostNetwork pod are the node's: the defaults are the ones README.md lists (The controllers:
metrics 5872-5875, health on 127.0.0.1:5876-5879; the netagent's endpoints are off unless asked), and a
busy port (any bind error) is one line on stderr naming the flag and exit status 2, before anything starts.

Each component runs as the container does (`python -m services.X.main`) against a port held by a
listener of this test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.httpendpoint import BindError, bind_endpoints
from services.labeler import main as labeler
from services.natmap import main as natmap
from services.netagent import main as netagent
from services.tunnel import main as tunnel

ROOT = Path(__file__).resolve().parents[2]
ENV = {"POD_NAME": "gw-0", "POD_NAMESPACE": "liqo", "POD_IP": "192.0.2.10"}

# (program, module, its metrics flag, its health flag)
COMPONENTS = [
    ("liqo-tunnel-controller", "services.tunnel.main", "--metrics-bind-address", "--health-bind-address"),
    ("liqo-natmap-controller", "services.natmap.main", "--metrics-bind-address", "--health-bind-address"),
    ("liqo-labeler", "services.labeler.main", "--metrics-bind-address", "--health-bind-address"),
    ("liqo-netagent", "services.netagent.main", "--metrics-address", "--health-address"),
]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 held by a listening socket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _argv(module: str, flag: str, other: str, address: str, tmp: Path) -> list[str]:
    argv = [sys.executable, "-m", module]
    if module == "services.netagent.main":
        # Every path in tmp: the agent must exit before creating any of them.
        argv += ["serve", "--socket", str(tmp / "run" / "netagent.sock"),
                 "--state-path", str(tmp / "state" / "state.json")]
        for role in ("labeler", "tunnel", "natmap"):
            argv += [f"--{role}-socket", str(tmp / "run" / f"{role}.sock")]
    else:
        argv += ["--kubeconfig", str(tmp / "no-kubeconfig"), "--netagent-socket", str(tmp / "n.sock")]
    return [*argv, flag, address, other, ""]


@pytest.mark.parametrize(("prog", "module", "metrics_flag", "health_flag"), COMPONENTS)
@pytest.mark.parametrize("which", ["metrics", "health"])
def test_a_busy_port_is_one_line_naming_the_flag_and_exit_2(
    prog: str, module: str, metrics_flag: str, health_flag: str, which: str, busy_port: int, tmp_path: Path
) -> None:
    flag, other = (metrics_flag, health_flag) if which == "metrics" else (health_flag, metrics_flag)
    address = f"127.0.0.1:{busy_port}"
    cp = subprocess.run(_argv(module, flag, other, address, tmp_path), cwd=ROOT, capture_output=True,
                        text=True, timeout=60, env={**os.environ, **ENV}, check=False)
    assert cp.returncode == 2, (cp.returncode, cp.stderr)
    assert cp.stderr == f"{prog}: {flag} {address}: Address already in use\n"
    assert cp.stdout == ""
    assert list(tmp_path.iterdir()) == [], "nothing may be created before the ports are bound"


def test_bind_endpoints_releases_the_first_when_the_second_is_busy(busy_port: int) -> None:
    """The one helper every component binds its ports with (services.common.httpendpoint)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(BindError, match=f"^--health-x 127.0.0.1:{busy_port}: Address already in use$"):
        bind_endpoints((f"127.0.0.1:{free}", "--metrics-x"), (f"127.0.0.1:{busy_port}", "--health-x"))
    with socket.socket() as again:  # the metrics port was released
        again.bind(("127.0.0.1", free))
    assert bind_endpoints(("", "--metrics-x"), ("", "--health-x")) == (None, None)
    metrics, health = bind_endpoints(("127.0.0.1:0", "--metrics-x"), ("", "--health-x"))
    assert metrics is not None and health is None
    metrics.stop()


@pytest.mark.parametrize(("prog", "module", "metrics_flag", "health_flag"), COMPONENTS)
def test_a_malformed_address_is_one_line_and_exit_2(
    prog: str, module: str, metrics_flag: str, health_flag: str, tmp_path: Path
) -> None:
    cp = subprocess.run(_argv(module, metrics_flag, health_flag, "nohost", tmp_path), cwd=ROOT,
                        capture_output=True, text=True, timeout=60, env={**os.environ, **ENV}, check=False)
    assert cp.returncode == 2, (cp.returncode, cp.stderr)
    assert cp.stderr.startswith(f"{prog}: {metrics_flag} 'nohost': expected host:port")
    assert cp.stderr.count("\n") == 1


def _default(parser_factory: object, flag: str) -> object:
    parser = parser_factory()  # type: ignore[operator]
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return action.default


@pytest.mark.parametrize(
    ("factory", "flag", "default"),
    [
        (tunnel.build_parser, "--metrics-bind-address", ":5873"),
        (natmap.build_parser, "--metrics-bind-address", ":5874"),
        (labeler.build_parser, "--metrics-bind-address", ":5875"),
        (tunnel.build_parser, "--health-bind-address", "127.0.0.1:5877"),
        (natmap.build_parser, "--health-bind-address", "127.0.0.1:5878"),
        (labeler.build_parser, "--health-bind-address", "127.0.0.1:5879"),
        (netagent.build_parser, "--metrics-address", ""),
        (netagent.build_parser, "--health-address", ""),
        (netagent.build_parser, "--listen-port", 5871),
        (netagent.build_parser, "--wireguard-go-mode", "spawn"),
        (netagent.build_parser, "--wireguard-implementation", "auto"),
    ],
)
def test_defaults_are_the_documented_ports(factory: object, flag: str, default: object) -> None:
    assert _default(factory, flag) == default


def test_the_old_flag_is_gone() -> None:
    for factory in (tunnel.build_parser, natmap.build_parser, labeler.build_parser):
        with pytest.raises(SystemExit):
            factory().parse_args(["--http-bind-address", ":8081"])
