"""--max-tunnels and --max-nat-entries on a real netagent: RESOURCE_EXHAUSTED, nothing changed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import NetAgent, activate, kernel_snapshot
from sandbox.testkit.resources import SAMPLE_OWNER, SAMPLE_TUNNEL
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import generate
from services.common.tunnel_pb import spec_to_pb
from services.common.tunnelspec import TunnelSpec

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def tunnel(n: int) -> pb.Tunnel:
    spec = dict(SAMPLE_TUNNEL)
    spec.update(
        cluster_id=f"cluster-{n}",
        remote_nat_pod_cidr=f"10.{60 + n}.0.0/16",
        remote_nat_external_cidr=f"10.{80 + n}.0.0/16",
        endpoint=f"192.0.2.{10 + n}",
        public_key=generate().public_key,
    )
    return spec_to_pb(TunnelSpec.parse(**spec))


def test_both_caps_answer_resource_exhausted(tmp_path: Path, node_factory: Callable[[str], Node]) -> None:
    node = node_factory("bounds")
    with NetAgent(node, tmp_path, args=("--max-tunnels", "2", "--max-nat-entries", "3")) as agent:
        api = agent.api
        activate(agent, generate().private_key)
        one, two = tunnel(1), tunnel(2)
        api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=one, owner=SAMPLE_OWNER))
        api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=two, owner="tenant-b/tep-b"))
        one_entry = {"10.0.0.5": "10.201.0.5"}
        api.SetNatMappings(pb.SetNatMappingsRequest(cluster_id=one.cluster_id, mappings=one_entry))
        before = kernel_snapshot(node)
        with pytest.raises(grpc.RpcError) as e:
            api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=tunnel(3), owner="tenant-c/tep-c"))
        assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-tunnels" in str(e.value.details())
        big = {f"10.0.1.{i}": f"10.201.1.{i}" for i in range(1, 4)}
        with pytest.raises(grpc.RpcError) as e:
            api.SetNatMappings(pb.SetNatMappingsRequest(cluster_id=two.cluster_id, mappings=big))
        assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-nat-entries" in str(e.value.details())
        assert kernel_snapshot(node) == before
        listed = api.ListTunnels(pb.ListTunnelsRequest()).tunnels
        counts = [(t.tunnel.cluster_id, t.nat_mapping_count) for t in listed]
        assert counts == [("cluster-1", 1), ("cluster-2", 0)]
        # Within the bound: fine.
        two_entries = {"10.0.1.1": "10.201.1.1", "10.0.1.2": "10.201.1.2"}
        req = pb.SetNatMappingsRequest(cluster_id=two.cluster_id, mappings=two_entries)
        assert api.SetNatMappings(req).count == 2
