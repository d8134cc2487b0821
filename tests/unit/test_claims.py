"""Ownership and bounds as tables (services/netagent/plan/claims.py, tunnelspec.check_owner)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.testkit.resources import SAMPLE_TUNNEL
from services.common.keys import generate
from services.common.tunnelspec import SpecError, TunnelSpec, check_owner
from services.netagent.errors import NotOwner, ResourceExhausted
from services.netagent.plan import claims

A, B = "tenant-a/tep-a", "tenant-b/tep-b"


def spec(cid: str, key: str, n: int = 0) -> TunnelSpec:
    fields: dict[str, Any] = dict(SAMPLE_TUNNEL)
    fields.update(
        cluster_id=cid,
        public_key=key,
        remote_nat_pod_cidr=f"10.{60 + n}.0.0/16",
        remote_nat_external_cidr=f"10.{80 + n}.0.0/16",
    )
    return TunnelSpec.parse(**fields)


KEY_A, KEY_B = generate().public_key, generate().public_key
TUNNELS = {"a": spec("a", KEY_A), "legacy": spec("legacy", generate().public_key, 1)}
OWNERS = {"a": A}  # "legacy" was adopted from a state file without owners


@pytest.mark.parametrize(
    ("request_spec", "owner", "refused"),
    [
        (spec("a", KEY_A), A, None),  # the owner re-ensures
        (spec("a", KEY_B), A, None),  # the owner rotates the key
        (spec("a", KEY_B), B, A),  # another owner: refused, naming A
        (spec("b", KEY_A, 2), B, A),  # another cluster with A's key: refused, naming A
        (spec("b", KEY_A, 2), A, A),  # even by the same owner: one key, one cluster
        (spec("b", KEY_B, 2), B, None),  # a new cluster with a new key
        (spec("legacy", TUNNELS["legacy"].public_key, 1), B, None),  # an ownerless tunnel is claimed
    ],
)
def test_check_claim(request_spec: TunnelSpec, owner: str, refused: str | None) -> None:
    if refused is None:
        claims.check_claim(TUNNELS, OWNERS, request_spec, owner)
    else:
        with pytest.raises(NotOwner, match=f"owned by TunnelEndpoint {refused}$"):
            claims.check_claim(TUNNELS, OWNERS, request_spec, owner)


@pytest.mark.parametrize(
    ("cid", "owner", "refused"),
    [("a", A, False), ("a", B, True), ("legacy", B, False), ("absent", B, False)],
)
def test_check_delete(cid: str, owner: str, refused: bool) -> None:
    if refused:
        with pytest.raises(NotOwner, match=A):
            claims.check_delete(TUNNELS, OWNERS, cid, owner)
    else:
        claims.check_delete(TUNNELS, OWNERS, cid, owner)


def test_bounds() -> None:
    claims.check_tunnel_room(TUNNELS, "a", 2)  # an update needs no room
    with pytest.raises(ResourceExhausted, match="--max-tunnels"):
        claims.check_tunnel_room(TUNNELS, "new", 2)
    claims.check_tunnel_room(TUNNELS, "new", 3)
    maps = {"a": [1] * 60000, "b": [1] * 5000}
    claims.check_nat_room(maps, "b", 5536, 65536)  # replacing b's map: its old size does not count
    with pytest.raises(ResourceExhausted, match="--max-nat-entries"):
        claims.check_nat_room(maps, "b", 5537, 65536)
    with pytest.raises(ResourceExhausted):
        claims.check_nat_room(maps, "c", 1, 65000)


@pytest.mark.parametrize(
    ("owner", "ok"),
    [
        ("liqo-tenant-rome/tep-rome", True),
        ("ns/name.with.dots", True),
        ("a/" + "b" * 253, True),
        ("a/" + "b" * 254, False),
        ("n" * 63 + "/x", True),
        ("n" * 64 + "/x", False),
        ("", False),
        ("ns", False),
        ("ns/", False),
        ("/name", False),
        ("Ns/name", False),
        ("ns/Name", False),
        ("ns/name\n", False),
        ("ns\n/name", False),
        ("ns/-name", False),
        ("ns/name-", False),
        ("ns/na_me", False),
        ("ns/a/b", False),
        ("ns.x/name", False),  # a namespace is a label: no dots
    ],
)
def test_check_owner(owner: str, ok: bool) -> None:
    if ok:
        assert check_owner(owner) == owner
    else:
        with pytest.raises(SpecError, match="owner"):
            check_owner(owner)
