"""Peering two emulated clusters: the TunnelEndpoints (and NatMappings) a Liqo network manager
would create, built by the kit's resource builders from the clusters' own CIDRs and keys."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from sandbox.testkit.cluster.cluster import EmulatedCluster
from sandbox.testkit.resources import namespace, nat_mapping, tunnel_endpoint
from services.common.kube import KubeError
from services.common.vocabulary import NAMESPACES, TUNNEL_ENDPOINTS

__all__ = ["Peering", "Remap", "cluster_nat_mapping", "cluster_tunnel_endpoint", "peer"]

NONE = "None"  # what Liqo writes for a CIDR that is not remapped


@dataclass(frozen=True)
class Remap:
    """How one cluster addresses the other's pod and external CIDRs ("None": no remapping)."""

    pod: str = NONE
    external: str = NONE


@dataclass(frozen=True)
class Peering:
    in_a: tuple[str, str]  # (name, namespace) of A's TunnelEndpoint towards B
    in_b: tuple[str, str]
    a_reaches_b: tuple[str, str]  # effective (pod, external) CIDRs A uses for B
    b_reaches_a: tuple[str, str]


def cluster_tunnel_endpoint(local: EmulatedCluster, remote: EmulatedCluster, *, local_sees_remote: Remap,
                            remote_sees_local: Remap, endpoint: str | None = None,
                            public_key: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The TunnelEndpoint `local` holds for `remote`, in namespace `liqo-tenant-<remote>`
    (endpoint: by default the remote VIP; key: by default the remote's shared key)."""
    return tunnel_endpoint(
        name=name or f"{remote.name}-tep", namespace=f"liqo-tenant-{remote.name}",
        cluster_id=remote.cluster_id, cluster_name=remote.name,
        local_pod=local.pod_cidr, local_nat_pod=remote_sees_local.pod,
        local_ext=local.external_cidr, local_nat_ext=remote_sees_local.external,
        remote_pod=remote.pod_cidr, remote_nat_pod=local_sees_remote.pod,
        remote_ext=remote.external_cidr, remote_nat_ext=local_sees_remote.external,
        endpoint=endpoint or remote.vip_ip, public_key=public_key or remote.public_key(),
    )


def cluster_nat_mapping(local: EmulatedCluster, remote: EmulatedCluster, mappings: dict[str, str], *,
                        pod_cidr: str, external_cidr: str, name: str | None = None) -> dict[str, Any]:
    """A NatMapping in `local` exporting local IPs (keys) as addresses of `external_cidr` (values),
    the CIDR `remote` uses for our external CIDR; `pod_cidr` is how we see the remote's pods."""
    return nat_mapping(name=name or f"natmapping-{remote.name}", cluster_id=remote.cluster_id,
                       pod_cidr=pod_cidr, external_cidr=external_cidr, mappings=mappings)


def _effective(remap: Remap, remote: EmulatedCluster) -> tuple[str, str]:
    return (remap.pod if remap.pod != NONE else remote.pod_cidr,
            remap.external if remap.external != NONE else remote.external_cidr)


def peer(a: EmulatedCluster, b: EmulatedCluster, *, a_sees_b: Remap, b_sees_a: Remap) -> Peering:
    """Creates the tenant namespaces and a TunnelEndpoint on each side (endpoint = the other's VIP),
    and routes each side's workers to the other's effective CIDRs through their active replica."""
    teps = []
    for local, remote, mine, theirs in ((a, b, a_sees_b, b_sees_a), (b, a, b_sees_a, a_sees_b)):
        tep = cluster_tunnel_endpoint(local, remote, local_sees_remote=mine, remote_sees_local=theirs)
        ns = tep["metadata"]["namespace"]
        with contextlib.suppress(KubeError):
            local.client.create(NAMESPACES, namespace(ns))
        local.route_remote(_effective(mine, remote))
        local.client.create(TUNNEL_ENDPOINTS, tep, ns)
        teps.append((tep["metadata"]["name"], ns))
    return Peering(teps[0], teps[1], _effective(a_sees_b, b), _effective(b_sees_a, a))
