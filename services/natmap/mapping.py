"""NatMapping spec -> the SetNatMappings map: a pure function that keeps the valid entries and
reports the invalid ones (one bad entry must not block a cluster's other workloads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from services.common.tunnelspec import SpecError, check_cluster_id, parse_cidr

MAX_ENTRIES = 65536


@dataclass(frozen=True)
class NatPlan:
    cluster_id: str
    external_cidr: IPv4Network
    mappings: dict[str, str]  # real (old) IP -> address in external_cidr (new)
    invalid: list[str] = field(default_factory=list)  # one human-readable line per skipped entry


def plan_from_natmapping(obj: dict[str, Any]) -> NatPlan:
    """Raises SpecError when the NatMapping as a whole is unusable (clusterID, externalCIDR)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise SpecError("spec: required")
    cid = spec.get("clusterID")
    if not isinstance(cid, str):
        raise SpecError("spec.clusterID: required")
    try:
        check_cluster_id(cid)
    except SpecError as e:
        raise SpecError(f"spec.clusterID: {e}") from None
    ext = spec.get("externalCIDR")
    net = parse_cidr("spec.externalCIDR", ext if isinstance(ext, str) else "")
    assert net is not None
    raw = spec.get("clusterMappings") or {}
    if not isinstance(raw, dict):
        raise SpecError("spec.clusterMappings: must be a map")
    valid: dict[str, str] = {}
    invalid: list[str] = []
    used: dict[IPv4Address, str] = {}
    # Sorted, so which of two entries claiming one address wins does not depend on map order.
    for old, new in sorted(raw.items(), key=lambda kv: str(kv[0])):
        try:
            old_ip = IPv4Address(str(old))
        except ValueError:
            invalid.append(f"{old}: key is not an IPv4 address")
            continue
        try:
            new_ip = IPv4Address(str(new))
        except ValueError:
            invalid.append(f"{old}: value {new!r} is not an IPv4 address")
            continue
        if new_ip not in net:
            invalid.append(f"{old}: {new_ip} is outside externalCIDR {net}")
            continue
        if new_ip in (net.network_address, net.broadcast_address) and net.prefixlen < 31:
            invalid.append(f"{old}: {new_ip} is the network or broadcast address of {net}")
            continue
        if new_ip in used:
            invalid.append(f"{old}: {new_ip} is already mapped to {used[new_ip]}")
            continue
        if len(valid) >= MAX_ENTRIES:
            invalid.append(f"{old}: more than {MAX_ENTRIES} entries")
            continue
        used[new_ip] = str(old_ip)
        valid[str(old_ip)] = str(new_ip)
    return NatPlan(cid, net, valid, invalid)
