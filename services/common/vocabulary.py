"""The names Liqo's gateway shares with the rest of a cluster: resources, labels, annotations, the
Secret and Lease names, and where each kind lives in the API. One home, so that the controllers, the
sandbox and the tests never spell them twice. It imports no Kubernetes client, so any process may.

The values are Liqo's own (group `net.liqo.io`, the Lease `1d5hml1.gateway.net.liqo.io`, the label
`net.liqo.io/gateway=active|standby`, the annotation `net.liqo.io/gatewayNodeIP`), so that a mixed
fleet of Liqo's gateways and ours agree on who leads and where the Service points.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACTIVE",
    "CLUSTER_ID_LABEL",
    "ENDPOINT_SLICES",
    "EVENTS",
    "FINALIZER",
    "GATEWAY_LABEL",
    "GATEWAY_SELECTOR",
    "GATEWAY_SELECTOR_STRING",
    "GROUP",
    "KEY_LABEL",
    "KEY_LABEL_VALUE",
    "KEY_SECRET",
    "LEASES",
    "LEASE_NAME",
    "NAMESPACES",
    "NAT_MAPPINGS",
    "NAT_MAPPING_LABEL",
    "NODE_IP_ANNOTATION",
    "PODS",
    "PSA_ENFORCE_LABEL",
    "PSA_PRIVILEGED",
    "SECRETS",
    "SERVICES",
    "SERVICE_NAME_LABEL",
    "STANDBY",
    "TUNNEL_ENDPOINTS",
    "WIREGUARD_PORT",
    "ResourceRef",
    "cluster_id_of",
]



@dataclass(frozen=True)
class ResourceRef:
    """Where a kind lives in the API: `group` is "" for the core group."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{urllib.parse.quote(name, safe='')}"
        if sub is not None:
            base += f"/{sub}"
        return base


PODS = ResourceRef("", "v1", "pods", "Pod")
SERVICES = ResourceRef("", "v1", "services", "Service")
SECRETS = ResourceRef("", "v1", "secrets", "Secret")
EVENTS = ResourceRef("", "v1", "events", "Event")
LEASES = ResourceRef("coordination.k8s.io", "v1", "leases", "Lease")
NAMESPACES = ResourceRef("", "v1", "namespaces", "Namespace", namespaced=False)
ENDPOINT_SLICES = ResourceRef("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # on an EndpointSlice: the Service it serves

GROUP = "net.liqo.io"
TUNNEL_ENDPOINTS = ResourceRef(GROUP, "v1alpha1", "tunnelendpoints", "TunnelEndpoint")
NAT_MAPPINGS = ResourceRef(GROUP, "v1alpha1", "natmappings", "NatMapping", namespaced=False)

# Put on TunnelEndpoints and NatMappings so that a deletion is never missed by the netagent.
FINALIZER = "liqo-gateway.net.liqo.io"

# The WireGuard key pair all replicas share: Secret data keys `privateKey` and `publicKey`.
KEY_SECRET = "wireguard-pubkey"
KEY_LABEL = "net.liqo.io/key"
KEY_LABEL_VALUE = "wireguard"

# Liqo's lock name, so that Liqo's gateways and ours never both lead one cluster.
LEASE_NAME = "1d5hml1.gateway.net.liqo.io"

# The leader labels its pod active and every other gateway pod standby; the Service selects active.
GATEWAY_LABEL = "net.liqo.io/gateway"
ACTIVE = "active"
STANDBY = "standby"
NODE_IP_ANNOTATION = "net.liqo.io/gatewayNodeIP"

# Pod Security Admission: the gateway pod is hostNetwork with a privileged netagent, so its namespace
# must enforce the `privileged` level (the chart's NOTES.txt asks for this label).
PSA_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
PSA_PRIVILEGED = "privileged"
GATEWAY_SELECTOR = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/component": "networking"}
GATEWAY_SELECTOR_STRING = ",".join(f"{k}={v}" for k, v in GATEWAY_SELECTOR.items())

CLUSTER_ID_LABEL = "clusterID"
NAT_MAPPING_LABEL = "net.liqo.io/natmapping"

# The gateway's WireGuard UDP port (Liqo's default).
WIREGUARD_PORT = 5871


def cluster_id_of(obj: dict[str, Any]) -> str:
    """The cluster id a TunnelEndpoint (`spec.clusterIdentity.clusterID`) or a NatMapping
    (`spec.clusterID`) names; "" when absent or not a string, even if the rest is invalid."""
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        return ""
    ident = spec.get("clusterIdentity")
    cid = ident.get("clusterID") if isinstance(ident, dict) else spec.get("clusterID")
    return cid if isinstance(cid, str) else ""


# Where the netagent's sockets live in the gateway pod. Each role socket sits in a directory that is
# a volume only that controller and the netagent mount (the mount is the capability: see
# docs/security.md); the all-methods socket and the state file sit in the netagent's private
# directory, which no controller mounts.
NETAGENT_RUN_DIR = "/run/liqo"
NETAGENT_SOCKET_NAME = "netagent.sock"
NETAGENT_PRIVATE_DIR = f"{NETAGENT_RUN_DIR}/netagent"


def netagent_socket(role: str) -> str:
    """The default path of the netagent socket that serves `role` ("labeler", "tunnel", "natmap";
    "netagent" is the operator's all-methods socket)."""
    return f"{NETAGENT_RUN_DIR}/{role}/{NETAGENT_SOCKET_NAME}"
