"""Group commit's pure half as tables (services/netagent/plan/batch.py): a batch of tunnel calls is
checked call by call, in order, against the state the calls before it left; a refused call gets its
own error, changes nothing and never affects the others."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest

from sandbox.testkit.resources import SAMPLE_TUNNEL
from services.common.keys import generate
from services.common.tunnelspec import SpecError, TunnelSpec
from services.netagent import state
from services.netagent.errors import NotOwner, ResourceExhausted
from services.netagent.plan import batch

A, B = "tenant-a/tep-a", "tenant-b/tep-b"
IP = IPv4Address("192.0.2.10")


def spec(cid: str, n: int, **over: Any) -> TunnelSpec:
    fields: dict[str, Any] = dict(SAMPLE_TUNNEL)
    fields.update(cluster_id=cid, public_key=generate().public_key,
                  remote_nat_pod_cidr=f"10.{60 + n}.0.0/16", remote_nat_external_cidr=f"10.{80 + n}.0.0/16")
    fields.update(over)
    return TunnelSpec.parse(**fields)


def committed(*tunnels: tuple[TunnelSpec, str]) -> state.AgentState:
    return state.AgentState(
        tunnels={s.cluster_id: s for s, _ in tunnels},
        endpoints={s.cluster_id: IP for s, _ in tunnels},
        owners={s.cluster_id: o for s, o in tunnels},
    )


def kinds(outcomes: list[batch.Outcome]) -> list[object]:
    return [o if isinstance(o, bool) else type(o) for o in outcomes]


def test_a_batch_is_the_calls_one_after_another() -> None:
    old = committed((spec("kept", 0), A))
    one, two = spec("one", 1), spec("two", 2)
    new, outcomes = batch.plan(old, [batch.Ensure(one, A, IP), batch.Ensure(two, B, IP),
                                     batch.Delete("kept", A)], max_tunnels=10)
    assert outcomes == [True, True, True]
    assert new.tunnels == {"one": one, "two": two}
    assert new.owners == {"one": A, "two": B}
    assert new.endpoints == {"one": IP, "two": IP}
    assert old.tunnels.keys() == {"kept"}  # the committed state is never edited


def test_each_refused_call_gets_its_own_error_and_changes_nothing() -> None:
    mine = spec("mine", 0)
    old = committed((mine, A))
    good = spec("good", 1)
    overlapping = spec("overlap", 2, remote_nat_pod_cidr="10.61.0.0/16")  # good's pod CIDR
    takeover = spec("mine", 3)
    twin = spec("twin", 4, public_key=good.public_key)  # good's key, which good claims in this batch
    late = spec("late", 5)
    ops: list[batch.Op] = [
        batch.Ensure(good, A, IP),
        batch.Ensure(overlapping, B, IP),
        batch.Ensure(takeover, B, IP),
        batch.Ensure(twin, B, IP),
        batch.Delete("mine", B),
        batch.Ensure(late, B, IP),  # the 3rd tunnel with max_tunnels=3: room for it
        batch.Ensure(spec("full", 6), B, IP),  # the 4th: no room
    ]
    new, outcomes = batch.plan(old, ops, max_tunnels=3)
    assert kinds(outcomes) == [True, SpecError, NotOwner, NotOwner, NotOwner, True, ResourceExhausted]
    assert "remote_nat_pod_cidr" in str(outcomes[1])  # INVALID_ARGUMENT names the field
    assert A in str(outcomes[2]) and A in str(outcomes[4])  # FAILED_PRECONDITION names the owner
    assert new.tunnels == {"mine": mine, "good": good, "late": late}
    assert new.owners == {"mine": A, "good": A, "late": B}


def test_an_unchanged_call_is_a_no_op_and_an_absent_delete_too() -> None:
    mine = spec("mine", 0)
    old = committed((mine, A))
    new, outcomes = batch.plan(old, [batch.Ensure(mine, A, IP), batch.Delete("absent", B)], max_tunnels=10)
    assert outcomes == [False, False]
    assert new == old
    _, [moved] = batch.plan(old, [batch.Ensure(mine, A, IPv4Address("192.0.2.99"))], max_tunnels=10)
    assert moved is True


@pytest.mark.parametrize("first_owner", [A, B])
def test_the_first_call_of_a_batch_claims_a_new_cluster_id(first_owner: str) -> None:
    other = B if first_owner == A else A
    s = spec("new", 0)
    new, outcomes = batch.plan(state.AgentState(), [batch.Ensure(s, first_owner, IP),
                                                    batch.Ensure(s, other, IP)], max_tunnels=10)
    assert kinds(outcomes) == [True, NotOwner]
    assert new.owners == {"new": first_owner}


def test_a_new_external_cidr_rechecks_the_kept_nat_mappings_of_that_call_only() -> None:
    mine = spec("mine", 0)
    old = committed((mine, A))
    old.nat_maps["mine"] = {IPv4Address("10.0.0.5"): IPv4Address("10.201.0.5")}
    moved = spec("mine", 0, public_key=mine.public_key, local_external_cidr="10.202.0.0/16")
    other = spec("other", 1)
    new, outcomes = batch.plan(old, [batch.Ensure(moved, A, IP), batch.Ensure(other, B, IP)], max_tunnels=10)
    assert kinds(outcomes) == [SpecError, True]
    assert new.tunnels == {"mine": mine, "other": other}
