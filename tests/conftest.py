"""Suite-wide fixtures: the `root` marker gate, the host-state guard and emulated nodes.

Host-state guard: when the suite runs as root, the host's (root namespaces') links, policy rules,
routes of every table, named netns and legacy iptables rules are snapshotted at session start and
compared at the end; any difference fails the session. Tests must do all their work inside emulated
nodes (sandbox/testkit/hosts.py), so the only legitimate changes come from *other* test runs sharing this
machine: those use names starting with `lgt-`, and lines mentioning such names are ignored (as are
iptables tables that merely got loaded, with no rule and ACCEPT policies, and route expiry timers).
On a machine of its own the suite would not need even that.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.nodes import PREFIX, NodeFactory

IS_ROOT = os.geteuid() == 0
ROOT_TOOLS = ("ip", "unshare", "nsenter", "setpriv", "wireguard-go", "wg", "iptables-legacy-save")
IGNORED_PREFIX = PREFIX


def _missing_tools() -> list[str]:
    return [t for t in ROOT_TOOLS if shutil.which(t) is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if not IS_ROOT:
        reason = "needs root (network namespaces, wireguard-go)"
    elif missing := _missing_tools():
        reason = f"missing tools: {', '.join(missing)} (run make install)"
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


# ---- host-state guard ----------------------------------------------------------------------------------


def _out(*argv: str) -> str:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return cp.stdout if cp.returncode == 0 else f"<{argv[0]} exited {cp.returncode}: {cp.stderr.strip()}>"


def _keep(line: str) -> bool:
    return IGNORED_PREFIX not in line


def _iptables(save: str) -> list[str]:
    """Rules per table without counters and comments; a table with no rule and only ACCEPT
    policies is dropped (merely loading a table module, as any `iptables -t nat -L` does, adds it)."""
    out: list[str] = []
    table: list[str] = []
    for raw in save.splitlines():
        line = re.sub(r"\[\d+:\d+\]", "", raw).rstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = [line]
        elif line == "COMMIT":
            meaningful = any(x.startswith("-") for x in table) or any(
                x.startswith(":") and x.split()[1] not in ("ACCEPT", "-") for x in table
            )
            if meaningful:
                out += [*table, line]
            table = []
        elif _keep(line):
            table.append(line)
    return out


def host_snapshot() -> dict[str, list[str]]:
    links = [m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)", _out("ip", "-o", "link", "show"), re.M)]
    routes = [re.sub(r"expires \d+sec ", "", line)
              for line in _out("ip", "route", "show", "table", "all").splitlines()]
    routes6 = [re.sub(r"expires \d+sec ", "", line)
               for line in _out("ip", "-6", "route", "show", "table", "all").splitlines()]
    return {
        "links": sorted(n for n in links if not n.startswith(IGNORED_PREFIX)),
        "rules": [line for line in _out("ip", "rule").splitlines() if _keep(line)],
        "rules6": [line for line in _out("ip", "-6", "rule").splitlines() if _keep(line)],
        "routes": sorted(line for line in routes if _keep(line)),
        "routes6": sorted(line for line in routes6 if _keep(line)),
        "netns": sorted(line for line in _out("ip", "netns", "list").splitlines() if _keep(line)),
        "iptables": _iptables(_out("iptables-legacy-save")),
    }


@pytest.fixture(scope="session", autouse=True)
def host_state_guard() -> Iterator[None]:
    """Fails the session when the host's non-Liqo network state changed (see the module doc)."""
    if not IS_ROOT or _missing_tools():
        yield
        return
    before = host_snapshot()
    yield
    after = host_snapshot()
    diff = {
        key: {"gone": [x for x in before[key] if x not in after[key]],
              "new": [x for x in after[key] if x not in before[key]]}
        for key in before
        if before[key] != after[key]
    }
    assert not diff, f"the test session changed the host's network state: {diff}"


# ---- emulated nodes ------------------------------------------------------------------------------------


@pytest.fixture
def node_factory() -> Iterator[Callable[[str], Node]]:
    """`make(name)` returns a started Node named `lgt-<name>-<random>`; all are stopped at teardown,
    whatever the test did (sandbox.testkit.nodes.NodeFactory)."""
    with NodeFactory() as nodes:
        yield nodes.make
