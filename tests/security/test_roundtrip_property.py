"""Whatever the API accepts survives a resync and a restart byte-exactly (docs/security.md, "The
netagent itself"), as a property: any spec `TunnelSpec.parse` accepts within the node's allowed
space (arbitrary Unicode cluster names, varied remaps, ports, keepalives) goes through the real
applier of one long-lived netagent in a node with a realistic uplink, comes back from ListTunnels
as sent, and then neither a resync nor a restart repairs anything: no "repaired drift" in the
agent's log, and the kernel snapshot identical before and after. The tunnel is deleted between
examples (and must leave the kernel as before it)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sandbox.testkit.nodes import NodeFactory
from sandbox.testkit.uplink import (
    DRIFT,
    NODE_ADDRESS,
    NODE_SUBNET,
    RESYNC_FAILED,
    Secure,
    snapshot,
    start_secure,
)
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.tunnel_pb import spec_from_pb, spec_to_pb
from services.common.tunnelspec import CLUSTER_ID_RE, SpecError, TunnelSpec

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

RESYNC = 0.25
OWNER = "liqo-tenant-prop/tep-prop"
# Second octets of 10.x.0.0/16 a remote may be reached at: not this cluster's pods (10.0), services
# (10.96-10.111) or external CIDR (10.201), not the legitimate tenant's 10.60 and 10.70.
REMOTE_OCTETS = [n for n in range(2, 60) if n not in (60, 70)]
LOCAL_NAT_OCTETS = list(range(120, 200))
# Any name check_cluster_name accepts: Unicode text without control, surrogate or line-breaking
# characters or quotes (format characters, emoji, combining marks and other scripts included).
NAMES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\"'\\"),
            max_size=63),
    st.just("\U0001f600" * 63),
)


@pytest.fixture(scope="module")
def lab(module_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    s = start_secure(module_nodes.make, tmp_path_factory.mktemp("roundtrip"), "roundtrip",
                     ("--resync-interval", str(RESYNC)))
    try:
        yield s
    finally:
        s.close()


def subnet(octet: int, prefix: int, index: int) -> str:
    """The `index`-th /`prefix` inside 10.`octet`.0.0/16."""
    net = IPv4Network(f"10.{octet}.0.0/16")
    subs = list(net.subnets(new_prefix=prefix)) if prefix > 16 else [net]
    return str(subs[index % len(subs)])


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    pod_octet, ext_octet = draw(st.lists(st.sampled_from(REMOTE_OCTETS), min_size=2, max_size=2, unique=True))
    prefixes = st.sampled_from([16, 18, 20, 24, 28])
    index = st.integers(0, 4095)

    def remote(local: str, octet: int) -> tuple[str, str]:
        """(remote CIDR, remote NAT CIDR): ours reused and remapped, or the remote's own CIDR reached
        as is, or remapped anyway."""
        eff = subnet(octet, draw(prefixes), draw(index))
        how = draw(st.sampled_from(["conflict", "direct", "remapped"]))
        if how == "conflict":
            return local, eff
        if how == "direct":
            return eff, draw(st.sampled_from(["", "None"]))
        return subnet(draw(st.sampled_from(REMOTE_OCTETS)), draw(prefixes), draw(index)), eff

    remote_pod, remote_nat_pod = remote("10.0.0.0/16", pod_octet)
    remote_ext, remote_nat_ext = remote("10.201.0.0/16", ext_octet)
    local_nat = st.sampled_from(["", "None", *[f"10.{n}.0.0/16" for n in LOCAL_NAT_OCTETS]])
    endpoint = draw(st.sampled_from(["100.64.0.0/10", "172.16.0.0/12", "203.0.113.0/24", NODE_SUBNET])
                    .flatmap(lambda net: st.ip_addresses(v=4, network=net)))
    return dict(
        cluster_id=draw(st.from_regex(CLUSTER_ID_RE, fullmatch=True).filter(lambda c: c != "rome")),
        cluster_name=draw(NAMES),
        local_pod_cidr="10.0.0.0/16",
        local_nat_pod_cidr=draw(local_nat),
        local_external_cidr="10.201.0.0/16",
        local_nat_external_cidr=draw(local_nat),
        remote_pod_cidr=remote_pod,
        remote_nat_pod_cidr=remote_nat_pod,
        remote_external_cidr=remote_ext,
        remote_nat_external_cidr=remote_nat_ext,
        endpoint=str(endpoint),
        endpoint_port=draw(st.integers(1, 65535)),
        public_key=base64.b64encode(draw(st.binary(min_size=32, max_size=32))).decode(),
        persistent_keepalive=draw(st.integers(0, 3600)),
    )


def _log_since(s: Secure, at: int) -> str:
    return s.agent.log_tail(10**8)[at:]


def _listed(s: Secure, cid: str) -> TunnelSpec:
    return spec_from_pb({t.tunnel.cluster_id: t for t in s.listed()}[cid].tunnel)


_node_subnet = IPv4Network(NODE_SUBNET)
REFUSED_ENDPOINTS = {NODE_ADDRESS, str(_node_subnet.network_address), str(_node_subnet.broadcast_address)}


@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kw=specs())
def test_accepted_specs_round_trip_resync_and_restart(lab: Secure, kw: dict[str, Any]) -> None:
    try:
        spec = TunnelSpec.parse(**kw)
    except SpecError:
        assume(False)
        raise
    # The node itself and its subnet's network and broadcast addresses are refused (attack rows prove it).
    assume(spec.endpoint not in REFUSED_ENDPOINTS)
    s = lab
    empty = snapshot(s.node)
    log_at = len(s.agent.log_tail(10**8))
    s.stub("tunnel").EnsureTunnel(pb.EnsureTunnelRequest(tunnel=spec_to_pb(spec), owner=OWNER), timeout=30)
    try:
        assert _listed(s, spec.cluster_id) == spec
        applied = snapshot(s.node)
        assert applied != empty

        time.sleep(RESYNC * 3)  # at least two resyncs
        log = _log_since(s, log_at)
        assert DRIFT not in log and RESYNC_FAILED not in log, log
        assert snapshot(s.node) == applied

        s.close_stubs()
        assert s.agent.stop() == 0
        log_at = len(s.agent.log_tail(10**8))
        s.agent.start()
        time.sleep(RESYNC * 3)
        log = _log_since(s, log_at)
        assert DRIFT not in log and RESYNC_FAILED not in log, log
        assert snapshot(s.node) == applied
        assert _listed(s, spec.cluster_id) == spec
    finally:
        s.stub("tunnel").DeleteTunnel(pb.DeleteTunnelRequest(cluster_id=spec.cluster_id, owner=OWNER),
                                      timeout=30)
    assert snapshot(s.node) == empty
