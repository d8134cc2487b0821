"""The reads behind `liqo-gateway status`: Kubernetes objects and the netagent's GetInfo and
ListTunnels, turned into a `Snapshot`. Thin on purpose: no judgement here, only what was read and
what could not be; `report.py` and `diagnose.py` decide what it means.

The key Secret is read to know whether it exists and holds a valid pair; only its public key is
kept. Its private key is never stored, logged or printed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import KeySecretError, parse_secret
from services.common.kube.client import JSON, KubeClient, KubeError, load_transport
from services.common.netagent_client import NetAgentClient, NetAgentError
from services.common.vocabulary import (
    ENDPOINT_SLICES,
    EVENTS,
    GATEWAY_LABEL,
    LEASE_NAME,
    LEASES,
    NAMESPACES,
    NAT_MAPPINGS,
    PODS,
    SECRETS,
    SERVICE_NAME_LABEL,
    SERVICES,
    TUNNEL_ENDPOINTS,
    ResourceRef,
)
from services.status.model import AgentRead, AgentTunnel, SecretState, Snapshot

TUNNEL_ERROR = "Error"


@dataclass(frozen=True)
class Target:
    """One cluster to read: its display name, how to reach its API server, and the netagent
    sockets given for it (pod name -> socket path; "" for a socket of unknown pod)."""

    name: str
    kubeconfig: str | None  # None: in-cluster service account
    context: str | None
    sockets: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Scope:
    namespace: str
    selector: str  # label selector of the gateway pods
    service: str  # the gateway Service's name; "" = every Service whose selector uses GATEWAY_LABEL
    key_secret: str
    request_timeout: float


def default_kubeconfig() -> str | None:
    """The default loading rules' file: $KUBECONFIG (its first existing entry), else ~/.kube/config;
    None when neither exists (then the in-cluster service account is used)."""
    for path in (os.environ.get("KUBECONFIG") or "").split(os.pathsep):
        if path and os.path.exists(path):
            return path
    home = os.path.expanduser("~/.kube/config")
    return home if os.path.exists(home) else None


def open_client(target: Target, timeout: float) -> KubeClient:
    """Raises KubeConfigError (a ValueError) or OSError (a usage problem) when the kubeconfig cannot
    be loaded."""
    return KubeClient(load_transport(target.kubeconfig, target.context), timeout=timeout)


def read_agent(pod: str, socket: str, timeout: float = 3.0) -> AgentRead:
    client = NetAgentClient(socket, timeout=timeout, retry_deadline=0)
    try:
        info = client.get_info(retry_deadline=0)
        tunnels = client.list_tunnels()
    except NetAgentError as e:
        return AgentRead(pod=pod, socket=socket, error=f"{e.code.name}: {e.details}")
    finally:
        client.close()
    return AgentRead(
        pod=pod,
        socket=socket,
        role=pb.Role.Name(info.role).removeprefix("ROLE_"),
        epoch=int(info.epoch),
        mtu=int(info.mtu),
        public_key=info.public_key,
        device_configured=info.device_configured,
        implementation=pb.WireguardImplementation.Name(info.wireguard_implementation).removeprefix(
            "WIREGUARD_IMPLEMENTATION_"),
        tunnels=tuple(_tunnel(e) for e in tunnels),
    )


def _tunnel(entry: pb.TunnelEntry) -> AgentTunnel:
    st = entry.status
    return AgentTunnel(
        cluster_id=entry.tunnel.cluster_id or st.cluster_id,
        owner=entry.owner or st.owner,
        state=pb.TunnelState.Name(st.state).removeprefix("TUNNEL_STATE_"),
        latency_s=st.latency.ToNanoseconds() / 1e9 if st.HasField("latency") else None,
        handshake_age_s=st.handshake_age.ToNanoseconds() / 1e9 if st.HasField("handshake_age") else None,
        rx_bytes=int(st.rx_bytes),
        tx_bytes=int(st.tx_bytes),
        nat_entries=int(entry.nat_mapping_count),
        state_since=st.state_since.ToNanoseconds() / 1e9 if st.HasField("state_since") else None,
    )


def _items(client: KubeClient, ref: ResourceRef, namespace: str | None = None,
           selector: str | None = None) -> list[JSON]:
    items = client.list(ref, namespace, label_selector=selector).get("items") or []
    return [i for i in items if isinstance(i, dict)]


def gather(target: Target, scope: Scope, client: KubeClient) -> Snapshot:
    snap = Snapshot(name=target.name, namespace=scope.namespace, now=time.time(),
                    key_secret_name=scope.key_secret)
    ns = scope.namespace
    try:
        snap.namespace_obj = client.get(NAMESPACES, ns)
    except KubeError as e:
        if e.unreachable:
            snap.read_errors.append(f"API server unreachable: {e.message}")
            return snap  # every other read would wait for the same timeout
        if e.not_found:
            snap.read_errors.append(f"namespace {ns} does not exist")
            return snap
        snap.namespace_error = str(e)
    try:
        snap.pods = _items(client, PODS, ns, scope.selector)
        services = _items(client, SERVICES, ns)
        snap.services = [s for s in services if _is_gateway_service(s, scope.service)]
        snap.tunnel_endpoints = _items(client, TUNNEL_ENDPOINTS)
        snap.nat_mappings = _items(client, NAT_MAPPINGS)
    except KubeError as e:
        snap.read_errors.append(f"listing: {e}")
    _read_endpoint_slices(client, snap, ns)
    try:
        snap.lease = client.get(LEASES, LEASE_NAME, ns)
    except KubeError as e:
        if not e.not_found:
            snap.read_errors.append(f"Lease {ns}/{LEASE_NAME}: {e}")
    _read_key_secret(client, snap, ns, scope.key_secret)
    _read_events(client, snap)
    snap.agents = [read_agent(pod, path) for pod, path in target.sockets]
    snap.now = time.time()
    return snap


def _is_gateway_service(svc: JSON, name: str) -> bool:
    if name:
        return bool((svc.get("metadata") or {}).get("name") == name)
    selector = (svc.get("spec") or {}).get("selector") or {}
    return isinstance(selector, dict) and GATEWAY_LABEL in selector


def _read_endpoint_slices(client: KubeClient, snap: Snapshot, ns: str) -> None:
    """The gateway Services' EndpointSlices: where kube-proxy and load balancers really send the
    traffic. Left None when the API does not serve them (404) or they cannot be read."""
    slices: dict[str, list[JSON]] = {}
    for svc in snap.services:
        name = str((svc.get("metadata") or {}).get("name") or "")
        try:
            slices[name] = _items(client, ENDPOINT_SLICES, ns, f"{SERVICE_NAME_LABEL}={name}")
        except KubeError:
            return  # not served, or forbidden: the selector check stands alone
    snap.endpoint_slices = slices


def _read_key_secret(client: KubeClient, snap: Snapshot, ns: str, name: str) -> None:
    try:
        secret = client.get(SECRETS, name, ns)
    except KubeError as e:
        snap.key_secret = SecretState.MISSING if e.not_found else SecretState.UNKNOWN
        snap.key_secret_detail = "" if e.not_found else f"{e.status} {e.reason}"
        return
    try:
        snap.key_public = parse_secret(secret).public_key
        snap.key_secret = SecretState.PRESENT
    except KeySecretError as e:  # its message never carries key material
        snap.key_secret = SecretState.UNUSABLE
        snap.key_secret_detail = str(e)
    finally:
        del secret  # the private key goes no further than this function


def _read_events(client: KubeClient, snap: Snapshot) -> None:
    """Events only where a TunnelEndpoint is in Error: they date the start of that Error."""
    namespaces = sorted({
        str((t.get("metadata") or {}).get("namespace") or "") for t in snap.tunnel_endpoints
        if ((t.get("status") or {}).get("connection") or {}).get("status") == TUNNEL_ERROR})
    for ns in namespaces:
        try:
            snap.events.extend(_items(client, EVENTS, ns))
        except KubeError:
            continue  # Events only refine the Error's age; without them the status's timestamp serves
