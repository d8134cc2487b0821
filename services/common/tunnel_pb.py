"""The one conversion between a TunnelSpec and the netagent API's `Tunnel` message.

The tunnel controller sends `spec_to_pb(spec)` in EnsureTunnel; the netagent reads it back with
`spec_from_pb`, which validates (SpecError naming the field) exactly as the controller did. Optional
NAT CIDRs travel as Liqo's "None" sentinel, a zero persistent keepalive as an absent field.

Imports only the generated API and TunnelSpec, so the netagent may import it (never the Kubernetes
runtime).
"""

from __future__ import annotations

from ipaddress import IPv4Network

from google.protobuf.duration_pb2 import Duration

from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.tunnelspec import NONE_CIDR, TunnelSpec

__all__ = ["duration", "spec_from_pb", "spec_to_pb"]


def duration(seconds: float) -> Duration:
    """A protobuf Duration of `seconds` (nanosecond precision)."""
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _optional_cidr(net: IPv4Network | None) -> str:
    return NONE_CIDR if net is None else str(net)


def spec_to_pb(spec: TunnelSpec) -> pb.Tunnel:
    t = pb.Tunnel(
        cluster_id=spec.cluster_id,
        cluster_name=spec.cluster_name,
        local_pod_cidr=str(spec.local_pod_cidr),
        local_nat_pod_cidr=_optional_cidr(spec.local_nat_pod_cidr),
        local_external_cidr=str(spec.local_external_cidr),
        local_nat_external_cidr=_optional_cidr(spec.local_nat_external_cidr),
        remote_pod_cidr=str(spec.remote_pod_cidr),
        remote_nat_pod_cidr=_optional_cidr(spec.remote_nat_pod_cidr),
        remote_external_cidr=str(spec.remote_external_cidr),
        remote_nat_external_cidr=_optional_cidr(spec.remote_nat_external_cidr),
        endpoint=spec.endpoint,
        endpoint_port=spec.endpoint_port,
        public_key=spec.public_key,
    )
    if spec.persistent_keepalive:
        t.persistent_keepalive.CopyFrom(duration(spec.persistent_keepalive))
    return t


def spec_from_pb(t: pb.Tunnel) -> TunnelSpec:
    """Validates an EnsureTunnel request's tunnel; raises SpecError naming the first bad field."""
    return TunnelSpec.parse(
        cluster_id=t.cluster_id,
        cluster_name=t.cluster_name,
        local_pod_cidr=t.local_pod_cidr,
        local_nat_pod_cidr=t.local_nat_pod_cidr,
        local_external_cidr=t.local_external_cidr,
        local_nat_external_cidr=t.local_nat_external_cidr,
        remote_pod_cidr=t.remote_pod_cidr,
        remote_nat_pod_cidr=t.remote_nat_pod_cidr,
        remote_external_cidr=t.remote_external_cidr,
        remote_nat_external_cidr=t.remote_nat_external_cidr,
        endpoint=t.endpoint,
        endpoint_port=t.endpoint_port,
        public_key=t.public_key,
        persistent_keepalive=t.persistent_keepalive.seconds if t.HasField("persistent_keepalive") else 0,
    )
