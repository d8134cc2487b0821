"""TunnelEndpoint -> netagent Tunnel: a pure function, validated with the shared TunnelSpec."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.tunnel_pb import spec_to_pb
from services.common.tunnelspec import SpecError, TunnelSpec, check_endpoint

BACKEND_WIREGUARD = "wireguard"


def _str(spec: dict[str, Any], field: str, *, required: bool = True) -> str:
    v = spec.get(field)
    if v is None or v == "":
        if required:
            raise SpecError(f"spec.{field}: required")
        return ""
    if not isinstance(v, str):
        raise SpecError(f"spec.{field}: must be a string")
    return v


def spec_from_endpoint(tep: dict[str, Any], *, persistent_keepalive: int = 0) -> TunnelSpec:
    """Validates a TunnelEndpoint's spec; raises SpecError naming the first bad field."""
    spec = tep.get("spec")
    if not isinstance(spec, dict):
        raise SpecError("spec: required")
    ident = spec.get("clusterIdentity")
    if not isinstance(ident, dict):
        raise SpecError("spec.clusterIdentity: required")
    backend = _str(spec, "backendType")
    if backend != BACKEND_WIREGUARD:
        raise SpecError(f"spec.backendType: {backend!r} is not supported (only {BACKEND_WIREGUARD!r})")
    cfg = spec.get("backend_config")
    if not isinstance(cfg, dict):
        raise SpecError("spec.backend_config: required")
    port_s = cfg.get("port")
    if not isinstance(port_s, str) or not port_s.isdigit():
        raise SpecError(f"spec.backend_config.port: {port_s!r} is not a port number")
    key = cfg.get("publicKey")
    if not isinstance(key, str) or not key:
        raise SpecError("spec.backend_config.publicKey: required")
    try:
        return TunnelSpec.parse(
            cluster_id=str(ident.get("clusterID") or ""),
            cluster_name=str(ident.get("clusterName") or ""),
            local_pod_cidr=_str(spec, "localPodCIDR"),
            local_nat_pod_cidr=_str(spec, "localNATPodCIDR", required=False),
            local_external_cidr=_str(spec, "localExternalCIDR"),
            local_nat_external_cidr=_str(spec, "localNATExternalCIDR", required=False),
            remote_pod_cidr=_str(spec, "remotePodCIDR"),
            remote_nat_pod_cidr=_str(spec, "remoteNATPodCIDR", required=False),
            remote_external_cidr=_str(spec, "remoteExternalCIDR"),
            remote_nat_external_cidr=_str(spec, "remoteNATExternalCIDR", required=False),
            endpoint=_str(spec, "endpointIP"),
            endpoint_port=int(port_s),
            public_key=key,
            persistent_keepalive=persistent_keepalive,
        )
    except SpecError as e:
        # TunnelSpec names fields in snake_case; say which TunnelEndpoint field it was.
        raise SpecError(_crd_field_names(str(e))) from None


_FIELDS = {
    "cluster_id": "spec.clusterIdentity.clusterID",
    "cluster_name": "spec.clusterIdentity.clusterName",
    "local_nat_pod_cidr": "spec.localNATPodCIDR",
    "local_pod_cidr": "spec.localPodCIDR",
    "local_nat_external_cidr": "spec.localNATExternalCIDR",
    "local_external_cidr": "spec.localExternalCIDR",
    "remote_nat_pod_cidr": "spec.remoteNATPodCIDR",
    "remote_pod_cidr": "spec.remotePodCIDR",
    "remote_nat_external_cidr": "spec.remoteNATExternalCIDR",
    "remote_external_cidr": "spec.remoteExternalCIDR",
    "endpoint_port": "spec.backend_config.port",
    "endpoint": "spec.endpointIP",
    "public_key": "spec.backend_config.publicKey",
}


def _crd_field_names(msg: str) -> str:
    head, sep, rest = msg.partition(":")
    if sep and head in _FIELDS:
        return f"{_FIELDS[head]}:{rest}"
    for snake, camel in _FIELDS.items():
        msg = msg.replace(snake, camel)
    return msg


def tunnel_from_endpoint(tep: dict[str, Any], *, persistent_keepalive: int = 0) -> pb.Tunnel:
    """The EnsureTunnel request for a TunnelEndpoint; SpecError when the spec is invalid."""
    return spec_to_pb(spec_from_endpoint(tep, persistent_keepalive=persistent_keepalive))


def is_dns_endpoint(endpoint: str) -> bool:
    """True for a name (re-resolved periodically), False for a literal IPv4 address."""
    check_endpoint(endpoint)
    try:
        IPv4Address(endpoint)
        return False
    except ValueError:
        return True
