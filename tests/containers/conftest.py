"""The image and podman inside emulated nodes. Root only; the image comes from `make image` (`make test`
builds it first): the tests fail, not skip, when it is missing, so a broken build cannot pass unseen.

`machine_state` snapshots what podman could leave on the machine (conmon processes, podman cgroups,
mounts, /var/lib/containers, /run/runc, /run/libpod, /run/containers) before each test and checks it
after: a test that leaves anything fails."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.podman import IMAGE, NodePodman, Podman, iter_conmons, mounts_matching, podman_cgroups
from sandbox.testkit.wait import wait_for

_MACHINE_PATHS = ("/var/lib/containers", "/run/runc", "/run/libpod", "/run/containers")


def machine_state() -> dict[str, list[str]]:
    return {
        "conmon": sorted(str(p) for p in iter_conmons()),
        "cgroups": podman_cgroups(),
        "mounts": mounts_matching(r"overlay|podman|liqo-podman|/run/netns"),
        "paths": [p for p in _MACHINE_PATHS if os.path.exists(p)],
    }


@pytest.fixture(scope="session")
def podman() -> Podman:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    engine = Podman()
    if not engine.image_exists():
        pytest.fail(f"{IMAGE} is not in {engine.storage}: run `make image`")
    return engine


@pytest.fixture
def nothing_left() -> Iterator[None]:
    before = machine_state()
    yield

    def new() -> dict[str, list[str]]:
        after = machine_state()
        return {k: [x for x in after[k] if x not in before[k]] for k in after if after[k] != before[k]}

    # An exec's conmon exits on its own, shortly after the exec returned: give it a moment.
    with contextlib.suppress(AssertionError):
        wait_for("podman's leftovers to go", lambda: not new(), timeout=10)
    left = new()
    assert not left, f"left behind on the machine: {left}"


@pytest.fixture
def node_engine(podman: Podman, nothing_left: None,
                node_factory: Callable[[str], Node]) -> Iterator[tuple[Node, NodePodman]]:
    """A started node with a podman inside it; everything is removed at teardown, then the node is
    stopped, then `nothing_left` checks the machine."""
    node = node_factory("pm")
    engine = podman.in_node(node)
    try:
        yield node, engine
    finally:
        engine.close()

