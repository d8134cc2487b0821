"""Group commit, the pure half: the new desired state a batch of tunnel calls asks for.

EnsureTunnel and DeleteTunnel calls that arrive while a commit runs are committed together by one
leader (`services.netagent.agent`): one routes update, one iptables restore, one peers write, one
state file write for the whole batch. Here the batch becomes a desired state: each call is checked
(claims, bounds, kept NAT mappings) against the state as the calls before it in the batch left it,
exactly as if they had run one after another; a call that fails its checks gets its own error and
changes nothing, so it never affects the other calls of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from services.common.tunnelspec import SpecError, TunnelSpec
from services.netagent import state
from services.netagent.errors import NotOwner, ResourceExhausted
from services.netagent.plan import claims, natrules

__all__ = ["Delete", "Ensure", "Op", "Outcome", "apply", "plan"]


@dataclass(frozen=True)
class Ensure:
    """EnsureTunnel, validated and resolved already (no I/O is left to do)."""

    spec: TunnelSpec
    owner: str
    endpoint_ip: IPv4Address


@dataclass(frozen=True)
class Delete:
    cluster_id: str
    owner: str


Op = Ensure | Delete
# Per call: True when it changed the desired state (a new or different tunnel or endpoint, a tunnel
# deleted), False for a no-op, or the error the call answers (nothing of it is in the new state).
Outcome = bool | SpecError | NotOwner | ResourceExhausted
REFUSALS = (SpecError, NotOwner, ResourceExhausted)


def apply(st: state.AgentState, op: Op, max_tunnels: int) -> bool:
    """Checks `op` against `st` and, if it passes, edits `st` (a copy being built); True when the
    desired state changed. Raises before editing anything: a refused call leaves `st` as it was."""
    if isinstance(op, Delete):
        cid = op.cluster_id
        if cid not in st.tunnels:
            return False
        claims.check_delete(st.tunnels, st.owners, cid, op.owner)
        for d in (st.tunnels, st.endpoints, st.nat_maps, st.owners):
            d.pop(cid, None)
        return True
    spec, cid = op.spec, op.spec.cluster_id
    claims.check_no_overlap(st.tunnels, spec)  # arguments first (INVALID_ARGUMENT), then claims
    claims.check_claim(st.tunnels, st.owners, spec, op.owner)
    claims.check_tunnel_room(st.tunnels, cid, max_tunnels)
    old = st.tunnels.get(cid)
    if old is not None and spec.local_remapped_external_cidr != old.local_remapped_external_cidr:
        # Mappings are addresses of the old external CIDR: re-check them against the new one.
        kept = st.nat_maps.get(cid, {})
        natrules.parse_nat_map(spec, {str(o): str(n) for o, n in kept.items()})
    changed = old != spec or st.endpoints.get(cid) != op.endpoint_ip
    st.tunnels[cid] = spec
    st.endpoints[cid] = op.endpoint_ip
    st.owners[cid] = op.owner
    return changed


def plan(
    old: state.AgentState, ops: Sequence[Op], max_tunnels: int
) -> tuple[state.AgentState, list[Outcome]]:
    """The state `ops` ask for, applied in order onto a copy of `old`, and each op's outcome."""
    new = old.editable()
    outcomes: list[Outcome] = []
    for op in ops:
        try:
            outcomes.append(apply(new, op, max_tunnels))
        except REFUSALS as e:
            outcomes.append(e)
    return new, outcomes
