"""The pure functions split out of the netagent's kernel modules, as tables; and the rule that
`services.netagent.plan` never touches the kernel."""

from __future__ import annotations

import ast
import pathlib
from ipaddress import IPv4Address, IPv4Network

import pytest

import services.netagent.plan as plan_pkg
from services.netagent.config import AgentConfig
from services.netagent.errors import Transient
from services.netagent.plan.resolver import choose_endpoint, endpoint_literal
from services.netagent.plan.routes import MAIN_TABLE, Route, desired_veth_routes

A, B, C = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), IPv4Address("192.0.2.3")
N = IPv4Network


@pytest.mark.parametrize(
    ("answers", "current", "want"),
    [
        ([A, B], None, A),  # nothing programmed yet: the first answer
        ([A, B], B, B),  # round robin reordered: keep the programmed address
        ([B, A], B, B),
        ([A, C], B, A),  # the programmed address left the answer set: move
        ([C], C, C),
    ],
)
def test_choose_endpoint(answers: list[IPv4Address], current: IPv4Address | None, want: IPv4Address) -> None:
    assert choose_endpoint("gw.example.com", answers, current) == want


def test_choose_endpoint_without_answers_is_transient() -> None:
    with pytest.raises(Transient, match="no IPv4 address"):
        choose_endpoint("gw.example.com", [], A)


@pytest.mark.parametrize(
    ("endpoint", "want"),
    [
        ("192.0.2.9", IPv4Address("192.0.2.9")),
        ("gw.example.com", None),
        ("2001:db8::1", None),  # not IPv4: resolved (and refused) as a name
        ("192.0.2.300", None),
        ("", None),
    ],
)
def test_endpoint_literal(endpoint: str, want: IPv4Address | None) -> None:
    assert endpoint_literal(endpoint) == want


@pytest.mark.parametrize(
    ("cfg", "host", "gw"),
    [
        (
            AgentConfig(),
            [Route(MAIN_TABLE, N("169.254.100.1/32"), "liqo.host")],
            [
                Route(MAIN_TABLE, N("169.254.100.2/32"), "liqo.gateway"),
                Route(MAIN_TABLE, N("0.0.0.0/0"), "liqo.gateway", gateway=IPv4Address("169.254.100.2")),
            ],
        ),
        (
            AgentConfig(host_veth="h9", gateway_veth="g9", gateway_veth_ip=IPv4Address("169.254.9.1"),
                        host_veth_ip=IPv4Address("169.254.9.2")),
            [Route(MAIN_TABLE, N("169.254.9.1/32"), "h9")],
            [
                Route(MAIN_TABLE, N("169.254.9.2/32"), "g9"),
                Route(MAIN_TABLE, N("0.0.0.0/0"), "g9", gateway=IPv4Address("169.254.9.2")),
            ],
        ),
    ],
)
def test_desired_veth_routes(cfg: AgentConfig, host: list[Route], gw: list[Route]) -> None:
    assert desired_veth_routes(cfg) == (host, gw)


# What a plan module may not import: the kernel, processes, raw syscalls, the appliers.
FORBIDDEN_IMPORTS = ("pyroute2", "subprocess", "ctypes", "fcntl", "select", "threading",
                     "services.common.netns", "services.netagent.kernel")
# `socket` is allowed for its pure address conversions (inet_pton/inet_ntoa) only.
ALLOWED_SOCKET_ATTRS = {"inet_pton", "inet_ntoa", "AF_INET"}
PLAN_FILES = sorted(pathlib.Path(plan_pkg.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", PLAN_FILES, ids=lambda p: p.name)
def test_plan_modules_do_not_touch_the_kernel(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if node.module == "socket":
                assert {a.name for a in node.names} <= ALLOWED_SOCKET_ATTRS, ast.dump(node)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "socket"):
            assert node.attr in ALLOWED_SOCKET_ATTRS, f"{path.name}:{node.lineno}: socket.{node.attr}"
        for name in names:
            assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IMPORTS), (
                f"{path.name}:{node.lineno} imports {name}"
            )
