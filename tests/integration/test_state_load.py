"""A state file is loaded through the API's validation: what no longer validates is skipped, logged
and counted (liqo_netagent_state_entries_skipped_total); the agent serves, never crash-loops."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import NetAgent
from sandbox.testkit.resources import SAMPLE_OWNER, SAMPLE_TUNNEL
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.tunnelspec import TunnelSpec
from services.netagent import state

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

METRICS = "127.0.0.1:19301"  # inside the node's own network namespace


def test_invalid_entries_are_skipped_logged_and_counted(
    tmp_path: Path, node_factory: Callable[[str], Node]
) -> None:
    node = node_factory("stload")
    node.run("ip", "link", "set", "lo", "up")
    good = TunnelSpec.parse(**SAMPLE_TUNNEL)
    bad = state.spec_to_dict(good) | {"cluster_id": "bad", "remote_pod_cidr": "0.0.0.0/0"}
    (tmp_path / "state.json").write_text(json.dumps({
        "version": state.VERSION, "listen_port": 5871, "mtu": 1340,
        "epoch": 2**64 - 1, "active_until_wall": 1e12,  # the reproduced poisoned grant
        "tunnels": [state.spec_to_dict(good), bad],
        "endpoints": {good.cluster_id: "192.0.2.10", "bad": "192.0.2.11"},
        "nat_maps": {good.cluster_id: {"10.0.0.5": "not an address"}},
        "owners": {good.cluster_id: SAMPLE_OWNER},
    }))
    with NetAgent(node, tmp_path, args=("--metrics-address", METRICS)) as agent:
        info = agent.api.GetInfo(pb.GetInfoRequest())
        assert info.role == pb.ROLE_STANDBY and info.epoch == 0
        listed = agent.api.ListTunnels(pb.ListTunnelsRequest()).tunnels
        assert [(t.tunnel.cluster_id, t.owner, t.nat_mapping_count) for t in listed] == [
            (good.cluster_id, SAMPLE_OWNER, 0)
        ]
        fetch = f"import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())"
        text = node.run(sys.executable, "-c", fetch).stdout
        assert "liqo_netagent_state_entries_skipped_total 3.0" in text, [
            line for line in text.splitlines() if "skipped" in line
        ]
        log = agent.log.read_text()
        assert "state entry skipped" in log and "'bad'" in log
