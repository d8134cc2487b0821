"""Who owns a cluster id (and a WireGuard key), decided from what the cluster holds: pure functions.

The netagent's first-claim check knows only the claims it has seen, so a netagent that lost its
state (a failover to a replica that never held them, a new pod, a restart without the state file)
would give a cluster id to whichever TunnelEndpoint reached it first. The gateway's records survive
there, in the status subresource that only the gateway writes (a tenant writes its spec and
metadata, and chooses when it creates its object, so neither the spec, the labels nor the
creationTimestamp can prove a claim):

- a holder record: `status.connection.peerConfiguration` names the `clusterID` and `publicKey` the
  gateway programmed for this TunnelEndpoint. It counts while the spec still names them.
- a refusal record: a `ClusterOwned` Error whose message names the owner
  ("... is owned by TunnelEndpoint <namespace>/<name>"). It counts while that owner is live and
  still conflicts, and is not itself refused naming someone live.

A TunnelEndpoint is held back (never sent; Error naming the owner) when another live one holds its
cluster id or its key (several holders, a leftover of an older gateway: the earliest created, then
namespace/name), or when its own refusal record names a live rival. Without any record (both
created since the gateway last wrote a status) nothing is held back and the netagent's first claim
decides, which then leaves records behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Claim", "Verdict", "claim_of", "held_back", "held_record", "owned_message", "owner_named",
           "record_to_keep"]

OWNED_BY = "is owned by TunnelEndpoint"
# Names are DNS-1123 (no space, no colon), and a cluster id cannot hold a space: the first match is
# the owner the gateway wrote, never text a tenant put in its spec.
_OWNER = re.compile(rf"\AclusterID \S+(?: |: .*?){OWNED_BY} ([a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*)")
ERROR = "Error"


@dataclass(frozen=True)
class Claim:
    """What a live TunnelEndpoint asks for and what the gateway recorded about it."""

    key: str  # namespace/name
    cluster_id: str  # spec
    public_key: str  # spec
    created: str  # metadata.creationTimestamp (RFC 3339, compares as text)
    held_cluster: str = ""  # status: the cluster id programmed for it
    held_key: str = ""  # status: the public key programmed for it
    refused_by: str = ""  # status: the owner its ClusterOwned Error names

    @property
    def holds_cluster(self) -> bool:
        return bool(self.held_cluster) and self.held_cluster == self.cluster_id

    @property
    def holds_key(self) -> bool:
        return self.holds_cluster and self.held_key == self.public_key


@dataclass(frozen=True)
class Verdict:
    owner: str  # namespace/name of the owner
    owner_cluster_id: str
    by_key: bool  # the conflict is the public key (another cluster id), not the cluster id

    def message(self, cluster_id: str) -> str:
        if self.by_key:
            return (f"clusterID {cluster_id}: public_key is already used by cluster "
                    f"{self.owner_cluster_id!r}, which {OWNED_BY} {self.owner}")
        return f"clusterID {cluster_id} {OWNED_BY} {self.owner}"


def owned_message(cluster_id: str, owner: str, details: str) -> str:
    """The Error message for a refusal naming `owner`; owner_named() reads it back."""
    return f"clusterID {cluster_id} {OWNED_BY} {owner}: {details}"


def owner_named(status: Any) -> str:
    """The owner a refusal record in `status` names, or ""."""
    conn = (status or {}).get("connection") if isinstance(status, dict) else None
    if not isinstance(conn, dict) or conn.get("status") != ERROR:
        return ""
    m = _OWNER.match(str(conn.get("statusMessage") or ""))
    return m.group(1) if m else ""


def held_record(status: Any) -> dict[str, str]:
    """The holder record in `status` ({"clusterID", "publicKey"}), {} without one."""
    conn = (status or {}).get("connection") if isinstance(status, dict) else None
    peer = conn.get("peerConfiguration") if isinstance(conn, dict) else None
    if not isinstance(peer, dict) or not isinstance(peer.get("clusterID"), str) or not peer["clusterID"]:
        return {}
    key = peer.get("publicKey")
    return {"clusterID": peer["clusterID"], "publicKey": key if isinstance(key, str) else ""}


def record_to_keep(status: Any, cluster_id: str) -> dict[str, str] | None:
    """The holder record an owner's own Error keeps: the one for the cluster id its spec still
    names (its last valid tunnel runs on); None for a record of another cluster id (the spec moved
    away, and that tunnel was deleted or no longer matters)."""
    held = held_record(status)
    return held if held and held["clusterID"] == cluster_id else None


def _str(d: Any, *path: str) -> str:
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d if isinstance(d, str) else ""


def claim_of(tep: Any) -> Claim | None:
    """The claim of a TunnelEndpoint; None when it claims nothing (being deleted, no cluster id)."""
    md = tep.get("metadata") if isinstance(tep, dict) else None
    if not isinstance(md, dict) or md.get("deletionTimestamp"):
        return None
    cid = _str(tep, "spec", "clusterIdentity", "clusterID")
    if not cid:
        return None
    held = held_record(tep.get("status"))
    return Claim(
        key=f"{md.get('namespace') or ''}/{md.get('name') or ''}",
        cluster_id=cid,
        public_key=_str(tep, "spec", "backend_config", "publicKey"),
        created=str(md.get("creationTimestamp") or ""),
        held_cluster=held.get("clusterID", ""),
        held_key=held.get("publicKey", ""),
        refused_by=owner_named(tep.get("status")),
    )


def _order(c: Claim) -> tuple[str, str]:
    return (c.created, c.key)


def _conflicts(a: Claim, b: Claim) -> bool:
    same_key = bool(a.public_key) and a.public_key == b.public_key
    return a.key != b.key and (a.cluster_id == b.cluster_id or same_key)


def held_back(me: Claim, claims: Iterable[Claim]) -> Verdict | None:
    """Whether `me` must not be sent to the netagent, and whom to name; `claims` are the live ones
    (`me` among them or not)."""
    live = {c.key: c for c in claims if c.key != me.key}
    rivals = [c for c in live.values() if _conflicts(me, c)]
    if not rivals:
        return None
    same_id = [c for c in rivals if c.cluster_id == me.cluster_id]
    holders = [c for c in (me, *same_id) if c.holds_cluster]
    if holders and (owner := min(holders, key=_order)).key != me.key:
        return Verdict(owner.key, owner.cluster_id, by_key=False)
    same_key = [c for c in rivals if c.cluster_id != me.cluster_id and c.public_key == me.public_key]
    key_holders = [c for c in (me, *same_key) if c.holds_key]
    if key_holders and (owner := min(key_holders, key=_order)).key != me.key:
        return Verdict(owner.key, owner.cluster_id, by_key=True)
    if me.holds_cluster:
        return None
    named = live.get(me.refused_by)
    if named is None or not _conflicts(me, named):
        return None
    # Two records naming each other (left by older gateways) cancel out: the netagent decides.
    other = live.get(named.refused_by) if named.refused_by != me.key else me
    if other is not None and _conflicts(named, other):
        return None
    return Verdict(named.key, named.cluster_id, by_key=named.cluster_id != me.cluster_id)
