"""The node factory: THE way a test, a benchmark or the sandbox gets a network namespace.

Every node is named `lgt-<name>-<random>` (the host-state guard ignores that prefix, so concurrent
runs on one machine do not trip each other's guard) and is stopped when the factory closes, whatever
happened in between. When the code under test needs a *named* netns, the node owns it
(`NodeFactory.netns`): it lives in the node's /run/netns and dies with the node.
"""

from __future__ import annotations

import functools
import inspect
import secrets
from collections.abc import Callable
from types import TracebackType

from sandbox.testkit.hosts import Node, NodeError

__all__ = ["PREFIX", "NodeFactory", "add_netns", "in_node_netns"]

PREFIX = "lgt-"


def add_netns(node: Node, name: str) -> str:
    """Creates the named netns `name` inside `node` (in the node's own /run/netns, with lo up) and
    returns its name. Code that opens /run/netns/NAME must then run inside the node (`node.run`,
    `node.exec_in_netns`, `node.call`)."""
    node.run("ip", "netns", "add", name)
    node.exec_in_netns(name, ["ip", "link", "set", "lo", "up"])
    return name


class NodeFactory:
    """`make(name)` starts a Node named `lgt-<name>-<random>`; `close()` stops every node it made
    (in reverse order), carrying on past failures and raising NodeError naming them at the end.
    Use as a context manager; usable at any pytest scope."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def __call__(self, name: str = "node") -> Node:
        return self.make(name)

    def make(self, name: str = "node") -> Node:
        node = Node(f"{PREFIX}{name}-{secrets.token_hex(3)}")
        self.nodes.append(node)
        node.start()
        return node

    def netns(self, name: str = "ns") -> tuple[Node, str]:
        """A fresh node holding one named netns (lo up): (node, netns name)."""
        node = self.make(name)
        return node, add_netns(node, f"{PREFIX}{name}")

    def close(self) -> None:
        errors = []
        for node in reversed(self.nodes):
            try:
                node.stop()
            except Exception as e:  # stop the others anyway
                errors.append(f"{node.name}: {e}")
        self.nodes.clear()
        if errors:
            raise NodeError(f"nodes did not stop cleanly: {errors}")

    def __enter__(self) -> NodeFactory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def in_node_netns(name: str, timeout: float = 120.0
                  ) -> Callable[[Callable[[str], None]], Callable[..., None]]:
    """Decorates a test `def test_x(netns: str)` whose code under test opens /run/netns/NAME: the
    test then takes the `node_factory` fixture, makes a node holding the named netns `lgt-<name>`,
    and runs the body in that node (`Node.call`: a forked child in the node's namespaces), so the
    name resolves in the node's /run/netns. Failures and their tracebacks come back to the test."""

    def decorate(test: Callable[[str], None]) -> Callable[..., None]:
        @functools.wraps(test)
        def run(node_factory: Callable[[str], Node]) -> None:
            node = node_factory(name)
            node.call(test, add_netns(node, f"{PREFIX}{name}"), timeout=timeout)

        run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("node_factory", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
        return run

    return decorate
