"""Who may change which tunnel, and how much the agent holds: pure checks over the desired state.

- A cluster id belongs to the TunnelEndpoint ("namespace/name") that first claimed it; another owner
  is refused (NotOwner, FAILED_PRECONDITION) with a message naming the owner. A tunnel adopted
  without an owner (a state file from before owners were kept) is claimed by the next caller.
- A WireGuard public key belongs to one cluster id: peers are keyed by public key, so a second
  cluster with the same key would silently take the first one's peer.
- Two tunnels may not route the same addresses (INVALID_ARGUMENT, as before).
- Bounds: at most `max_tunnels` tunnels and `max_nat_entries` NAT entries in total
  (ResourceExhausted, RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from collections.abc import Mapping, Sized

from services.common.tunnelspec import SpecError, TunnelSpec
from services.netagent.errors import NotOwner, ResourceExhausted

__all__ = ["check_claim", "check_delete", "check_nat_room", "check_no_overlap", "check_tunnel_room"]

OWNED_BY = "is owned by TunnelEndpoint"  # the phrase clients look for (NetAgentError.not_owner)


def check_claim(
    tunnels: Mapping[str, TunnelSpec], owners: Mapping[str, str], spec: TunnelSpec, owner: str
) -> None:
    cid = spec.cluster_id
    current = owners.get(cid, "")
    if cid in tunnels and current and current != owner:
        raise NotOwner(f"cluster id {cid!r} {OWNED_BY} {current}")
    for other_cid, other in tunnels.items():
        if other_cid != cid and other.public_key == spec.public_key:
            holder = owners.get(other_cid) or "(unknown)"
            raise NotOwner(
                f"public_key is already used by cluster {other_cid!r}, which {OWNED_BY} {holder}"
            )


def check_delete(tunnels: Mapping[str, TunnelSpec], owners: Mapping[str, str], cid: str, owner: str) -> None:
    current = owners.get(cid, "")
    if cid in tunnels and current and current != owner:
        raise NotOwner(f"cluster id {cid!r} {OWNED_BY} {current}")


def check_no_overlap(tunnels: Mapping[str, TunnelSpec], spec: TunnelSpec) -> None:
    """Two tunnels routing the same addresses would steal each other's traffic."""
    mine_fields = (
        ("remote_nat_pod_cidr" if spec.remote_nat_pod_cidr else "remote_pod_cidr", spec.eff_remote_pod_cidr),
        ("remote_nat_external_cidr" if spec.remote_nat_external_cidr else "remote_external_cidr",
         spec.eff_remote_external_cidr),
    )
    for other in tunnels.values():
        if other.cluster_id == spec.cluster_id:
            continue
        for fname, mine in mine_fields:
            for theirs in other.allowed_ips:
                if mine.overlaps(theirs):
                    raise SpecError(
                        f"{fname}: remote CIDR {mine} overlaps {theirs} of tunnel {other.cluster_id!r}"
                    )


def check_tunnel_room(tunnels: Mapping[str, TunnelSpec], cid: str, max_tunnels: int) -> None:
    if cid not in tunnels and len(tunnels) >= max_tunnels:
        raise ResourceExhausted(
            f"tunnels: {len(tunnels)} configured, at most {max_tunnels} (--max-tunnels)"
        )


def check_nat_room(nat_maps: Mapping[str, Sized], cid: str, entries: int, max_entries: int) -> None:
    others = sum(len(m) for c, m in nat_maps.items() if c != cid)
    if others + entries > max_entries:
        raise ResourceExhausted(
            f"mappings: {entries} entries with {others} of other clusters exceed "
            f"{max_entries} in total (--max-nat-entries)"
        )
