"""Only the kit creates network namespaces: tests, benchmarks and the demo get one from
sandbox/testkit (the `node_factory` fixture, `nodes.add_netns`), which also removes it, so a failing
test never leaves a namespace on the machine. An AST scan of tests/, bench/ and sandbox/ outside
sandbox/testkit/ for `ip netns add`, `unshare --net` and os.unshare(CLONE_NEWNET)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "bench", "sandbox")
KIT = ROOT / "sandbox" / "testkit"
# Runs `ip netns add` inside a kit node (and a pod of it) on purpose: mount propagation of the
# netns directory between a node and its pods is what that test checks.
ALLOWED = {ROOT / "tests" / "containers" / "test_node_pods.py"}
NET_FLAGS = ("-n", "--net")


def _strings(call: ast.Call) -> list[str]:
    """The call's string arguments, a list or tuple argument flattened (argv written either way)."""
    out: list[str] = []
    for arg in call.args:
        elts = arg.elts if isinstance(arg, (ast.List, ast.Tuple)) else [arg]
        out += [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return out


def creations(source: str, rel: str) -> list[str]:
    """"file:line: what" for each place that creates a network namespace."""
    found = []
    for node in ast.walk(ast.parse(source, rel)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "ip netns add" in node.value:
            found.append(f"{rel}:{node.lineno}: ip netns add (shell)")
        if not isinstance(node, ast.Call):
            continue
        args = _strings(node)
        if any(args[i:i + 2] == ["netns", "add"] for i in range(len(args))):
            found.append(f"{rel}:{node.lineno}: ip netns add")
        if "unshare" in args and any(a in NET_FLAGS or a.startswith("--net=") for a in args):
            found.append(f"{rel}:{node.lineno}: unshare --net")
        if isinstance(node.func, ast.Attribute) and node.func.attr == "unshare":
            found.append(f"{rel}:{node.lineno}: os.unshare")
    return found


def test_only_the_kit_creates_network_namespaces() -> None:
    found = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if KIT in path.parents or path in ALLOWED or path == Path(__file__).resolve():
                continue  # (this file spells what it looks for)
            found += creations(path.read_text(), str(path.relative_to(ROOT)))
    assert found == [], "get one from sandbox/testkit (node_factory, nodes.add_netns):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ('subprocess.run(["ip", "netns", "add", "x"])\n', ["ip netns add"]),
        ('node.run("ip", "netns", "add", name)\n', ["ip netns add"]),
        ('os.system("ip netns add x")\n', ["ip netns add (shell)"]),
        ('subprocess.Popen(("unshare", "--net", "--mount", "sleep", "1"))\n', ["unshare --net"]),
        ('os.unshare(os.CLONE_NEWNET)\n', ["os.unshare"]),
        ('node.run("ip", "netns", "exec", ns, "ip", "link")\n', []),  # entering is fine
        ('node.run("ip", "netns", "del", ns)\n', []),
    ],
)
def test_the_scan_finds_a_planted_creation(source: str, flagged: list[str]) -> None:
    assert [f.split(": ", 1)[1] for f in creations(source, "planted.py")] == flagged
