"""What tests/security shares besides the kit's `sandbox.testkit.uplink` (the node with a realistic
uplink, its guarded netagent and the observations every attack is judged by)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.testkit.nodes import NodeFactory


@pytest.fixture(scope="module")
def module_nodes() -> Iterator[NodeFactory]:
    """A node factory living as long as the test module (one agent shared by a table's rows)."""
    with NodeFactory() as nodes:
        yield nodes

