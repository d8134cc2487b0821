"""The image and podman inside emulated nodes. Root only; the image comes from `make image` (`make test`
builds it first): the tests fail, not skip, when it is missing, so a broken build cannot pass unseen.
Every test checks that it left nothing of podman's on the machine (sandbox.testkit.podman.leaves_nothing:
conmon processes, podman cgroups, mounts, /var/lib/containers, /run/runc, /run/libpod, /dev/shm/...)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.podman import IMAGE, NodePodman, Podman, leaves_nothing


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
    with leaves_nothing():
        yield


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
