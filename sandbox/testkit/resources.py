"""THE builders of the resources tests, benchmarks and the sandbox create: TunnelEndpoint (as Liqo's
network manager writes it), NatMapping (as Liqo's NAT mapping manager writes it) and Namespace, on
the names of `services.common.vocabulary`; and the sample TunnelSpec arguments tests share."""

from __future__ import annotations

from typing import Any

from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.tunnelspec import TunnelSpec
from services.common.vocabulary import (
    CLUSTER_ID_LABEL,
    NAMESPACES,
    NAT_MAPPING_LABEL,
    NAT_MAPPINGS,
    TUNNEL_ENDPOINTS,
    WIREGUARD_PORT,
)

__all__ = ["SAMPLE_KEY", "SAMPLE_TUNNEL", "namespace", "nat_mapping", "overlapping_tunnel", "tunnel_endpoint"]

# What Liqo writes for a CIDR that needs no remapping.
NONE = "None"

# A valid WireGuard public key, for specs whose key nobody uses.
SAMPLE_KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="

# The owner ("namespace/name" of the claiming TunnelEndpoint) that EnsureTunnel and DeleteTunnel
# require; tests that call the netagent directly claim their tunnels with it.
SAMPLE_OWNER = "liqo-tenant-rome/tep-rome"

# `TunnelSpec.parse(**SAMPLE_TUNNEL)`: cluster "rome", whose pods (10.0.0.0/16) and external CIDR
# (10.201.0.0/16) both conflict with ours and are reached as 10.60.0.0/16 and 10.70.0.0/16.
SAMPLE_TUNNEL: dict[str, Any] = dict(
    cluster_id="b1c2d3e4-0000-4000-8000-000000000001",
    cluster_name="rome",
    local_pod_cidr="10.0.0.0/16",
    local_external_cidr="10.201.0.0/16",
    remote_pod_cidr="10.0.0.0/16",
    remote_nat_pod_cidr="10.60.0.0/16",
    remote_external_cidr="10.201.0.0/16",
    remote_nat_external_cidr="10.70.0.0/16",
    endpoint="192.0.2.10",
    endpoint_port=5871,
    public_key=SAMPLE_KEY,
)



def sample_spec(**over: Any) -> TunnelSpec:
    """A valid TunnelSpec for pure tests: cluster "remote-1" behind 172.31.0.2, its pods (10.0.0.0/16)
    remapped to 10.60.0.0/16 and its external CIDR 10.70.0.0/16 reached as is; fields overridden by
    `over` (raw strings, validated by `TunnelSpec.parse`)."""
    return TunnelSpec.parse(**{**SAMPLE_TUNNEL, "cluster_id": "remote-1", "endpoint": "172.31.0.2",
                               "remote_external_cidr": "10.70.0.0/16", "remote_nat_external_cidr": "",
                               **over})

def overlapping_tunnel(*, cluster_id: str, endpoint: str, public_key: str, seen_as: int, sees: int,
                       cluster_name: str = "") -> pb.Tunnel:
    """An EnsureTunnel tunnel between two clusters with the same pod CIDR (10.0.0.0/16) and external
    CIDR (10.201.0.0/16): this cluster's pods are 10.<seen_as>.0.0/16 (external 10.<seen_as+10>) to
    the other, which it reaches through 10.<sees>.0.0/16 (external 10.<sees+10>)."""
    return pb.Tunnel(
        cluster_id=cluster_id, cluster_name=cluster_name, endpoint=endpoint, endpoint_port=WIREGUARD_PORT,
        public_key=public_key,
        local_pod_cidr="10.0.0.0/16", local_external_cidr="10.201.0.0/16",
        remote_pod_cidr="10.0.0.0/16", remote_external_cidr="10.201.0.0/16",
        local_nat_pod_cidr=f"10.{seen_as}.0.0/16", local_nat_external_cidr=f"10.{seen_as + 10}.0.0/16",
        remote_nat_pod_cidr=f"10.{sees}.0.0/16", remote_nat_external_cidr=f"10.{sees + 10}.0.0/16")


def tunnel_endpoint(
    *,
    name: str,
    namespace: str,
    cluster_id: str,
    local_pod: str,
    local_ext: str,
    remote_pod: str,
    remote_ext: str,
    endpoint: str,
    public_key: str,
    local_nat_pod: str = NONE,
    local_nat_ext: str = NONE,
    remote_nat_pod: str = NONE,
    remote_nat_ext: str = NONE,
    port: int = WIREGUARD_PORT,
    cluster_name: str | None = None,
) -> dict[str, Any]:
    """A TunnelEndpoint as Liqo's network manager writes it ("None" for a CIDR not remapped);
    `cluster_name` defaults to `name`."""
    return {
        "apiVersion": TUNNEL_ENDPOINTS.api_version,
        "kind": TUNNEL_ENDPOINTS.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {CLUSTER_ID_LABEL: cluster_id}},
        "spec": {
            "clusterIdentity": {"clusterID": cluster_id, "clusterName": cluster_name or name},
            "localPodCIDR": local_pod,
            "localNATPodCIDR": local_nat_pod,
            "localExternalCIDR": local_ext,
            "localNATExternalCIDR": local_nat_ext,
            "remotePodCIDR": remote_pod,
            "remoteNATPodCIDR": remote_nat_pod,
            "remoteExternalCIDR": remote_ext,
            "remoteNATExternalCIDR": remote_nat_ext,
            "endpointIP": endpoint,
            "backendType": "wireguard",
            "backend_config": {"publicKey": public_key, "port": str(port)},
        },
    }


def nat_mapping(*, name: str, cluster_id: str, pod_cidr: str, external_cidr: str,
                mappings: dict[str, str]) -> dict[str, Any]:
    """A NatMapping (cluster-scoped) as Liqo writes it: `mappings` is old address -> new address."""
    return {
        "apiVersion": NAT_MAPPINGS.api_version,
        "kind": NAT_MAPPINGS.kind,
        "metadata": {"name": name, "labels": {NAT_MAPPING_LABEL: "true", CLUSTER_ID_LABEL: cluster_id}},
        "spec": {"clusterID": cluster_id, "podCIDR": pod_cidr, "externalCIDR": external_cidr,
                 "clusterMappings": dict(mappings)},
    }


def namespace(name: str) -> dict[str, Any]:
    """A Namespace body."""
    return {"apiVersion": NAMESPACES.api_version, "kind": NAMESPACES.kind, "metadata": {"name": name}}
