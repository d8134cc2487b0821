"""Who owns a cluster id or a key, from the gateway's records (services.tunnel.ownership), as tables."""

# ruff: noqa: E501  (one table row per line reads best)

from __future__ import annotations

from typing import Any

import pytest

from services.tunnel.ownership import (
    Claim,
    Verdict,
    claim_of,
    held_back,
    owned_message,
    owner_named,
    record_to_keep,
)

X, Y = "cluster-x", "cluster-y"
KA, KB, KC = "A" * 43 + "=", "B" * 43 + "=", "C" * 43 + "="
T1, T2, T3 = "2026-11-30T10:00:00Z", "2026-11-30T11:00:00Z", "2026-11-30T12:00:00Z"


def c(key: str, cid: str = X, pk: str = KA, created: str = T2, held: tuple[str, str] | None = None,
      refused_by: str = "") -> Claim:
    h = held or ("", "")
    return Claim(key=key, cluster_id=cid, public_key=pk, created=created, held_cluster=h[0], held_key=h[1],
                 refused_by=refused_by)


ROWS: list[tuple[str, Claim, list[Claim], Verdict | None]] = [
    ("alone", c("b/b"), [], None),
    ("a rival without any record: the netagent decides", c("b/b", pk=KB), [c("a/a")], None),
    ("a rival holds the cluster id", c("b/b", pk=KB), [c("a/a", held=(X, KA))], Verdict("a/a", X, by_key=False)),
    ("an OLDER intruder without a record against the holder", c("b/b", pk=KB, created=T1), [c("a/a", created=T3, held=(X, KA))], Verdict("a/a", X, by_key=False)),
    ("the holder itself is sent", c("a/a", created=T3, held=(X, KA)), [c("b/b", pk=KB, created=T1)], None),
    ("the holder with another key recorded (rotating) still holds the cluster id", c("b/b", pk=KB), [c("a/a", pk=KC, held=(X, KA))], Verdict("a/a", X, by_key=False)),
    ("an intruder recorded for its own cluster id Y edits in X: Y's record proves nothing", c("a/a"), [c("b/b", pk=KB, created=T1, held=(Y, KB))], None),
    ("the rival held X but now names Z: no rival", c("b/b", pk=KB), [c("a/a", cid="z", held=(X, KA))], None),
    ("two holders (left by an older gateway): the earliest created", c("b/b", pk=KB, created=T1, held=(X, KB)), [c("a/a", created=T2, held=(X, KA))], None),
    ("two holders, the later one is held back", c("a/a", created=T2, held=(X, KA)), [c("b/b", pk=KB, created=T1, held=(X, KB))], Verdict("b/b", X, by_key=False)),
    ("two holders created together: namespace/name", c("b/b", pk=KB, held=(X, KB)), [c("a/a", held=(X, KA))], Verdict("a/a", X, by_key=False)),
    ("another cluster id with the holder's key", c("b/b", cid=Y), [c("a/a", held=(X, KA))], Verdict("a/a", X, by_key=True)),
    ("another cluster id with a key the holder no longer records", c("b/b", cid=Y, pk=KC), [c("a/a", pk=KC, held=(X, KA))], None),
    ("a holder of Y edits in the key A holds: A keeps it", c("a/a", held=(X, KA)), [c("b/b", cid=Y, created=T1, held=(Y, KB))], None),
    ("... and the holder of Y is held back by key", c("b/b", cid=Y, created=T1, held=(Y, KB)), [c("a/a", held=(X, KA))], Verdict("a/a", X, by_key=True)),
    ("refused naming a live rival", c("b/b", pk=KB, refused_by="a/a"), [c("a/a")], Verdict("a/a", X, by_key=False)),
    ("refused naming a rival that is gone", c("b/b", pk=KB, refused_by="a/a"), [c("c/c", cid=Y, pk=KC)], None),
    ("refused naming one that no longer conflicts", c("b/b", pk=KB, refused_by="a/a"), [c("a/a", cid=Y, pk=KC)], None),
    ("refused by key, naming a live rival", c("b/b", cid=Y, refused_by="a/a"), [c("a/a")], Verdict("a/a", X, by_key=True)),
    ("records naming each other cancel out", c("b/b", pk=KB, refused_by="a/a"), [c("a/a", refused_by="b/b")], None),
    ("the one named is itself refused naming a live rival", c("b/b", pk=KB, refused_by="a/a"), [c("a/a", refused_by="c/c"), c("c/c", pk=KC)], None),
    ("the one named is refused naming someone gone", c("b/b", pk=KB, refused_by="a/a"), [c("a/a", refused_by="c/c")], Verdict("a/a", X, by_key=False)),
    ("a holder record outranks a refusal record", c("b/b", pk=KB, refused_by="c/c"), [c("a/a", held=(X, KA)), c("c/c", pk=KC)], Verdict("a/a", X, by_key=False)),
    ("itself among the claims", c("a/a", held=(X, KA)), [c("a/a", held=(X, KA)), c("b/b", pk=KB)], None),
]


@pytest.mark.parametrize(("me", "claims", "want"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_held_back(me: Claim, claims: list[Claim], want: Verdict | None) -> None:
    assert held_back(me, claims) == want
    assert held_back(me, list(reversed(claims))) == want, "the decision depends on the cache's order"


def err(message: str, status: str = "Error") -> dict[str, Any]:
    return {"connection": {"status": status, "statusMessage": message}}


@pytest.mark.parametrize(
    ("status", "owner"),
    [
        (err(Verdict("ns-a/a", X, by_key=False).message(X)), "ns-a/a"),
        (err(Verdict("ns-a/a.b", X, by_key=True).message(Y)), "ns-a/a.b"),
        (err(owned_message(Y, "ns-a/a", f"public_key is already used by cluster {X!r}, which is owned by TunnelEndpoint ns-c/c")), "ns-a/a"),
        (err(owned_message(X, "?", "cluster id is owned by TunnelEndpoint ns-c/c")), ""),
        (err(Verdict("ns-a/a", X, by_key=False).message(X), status="Connected"), ""),
        (err("invalid TunnelEndpoint: spec.endpointIP: 'clusterID x is owned by TunnelEndpoint ns-a/a' is not an address"), ""),
        (err("No network connectivity towards remote cluster"), ""),
        ({}, ""),
        (None, ""),
        ({"connection": "x"}, ""),
    ],
)
def test_owner_named(status: Any, owner: str) -> None:
    assert owner_named(status) == owner


def tep(**md: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "a", "namespace": "ns-a", "creationTimestamp": T1, **md},
        "spec": {"clusterIdentity": {"clusterID": X}, "backend_config": {"publicKey": KA, "port": "51840"}},
        "status": {"connection": {"status": "Connected", "peerConfiguration": {"clusterID": X, "publicKey": KA, "port": "51840"}}},
    }


def test_claim_of() -> None:
    assert claim_of(tep()) == Claim("ns-a/a", X, KA, T1, held_cluster=X, held_key=KA)
    assert claim_of(tep(deletionTimestamp=T2)) is None
    no_id = tep()
    no_id["spec"]["clusterIdentity"] = {}
    assert claim_of(no_id) is None
    refused = tep()
    refused["status"] = err(Verdict("ns-b/b", X, by_key=False).message(X))
    assert claim_of(refused) == Claim("ns-a/a", X, KA, T1, refused_by="ns-b/b")
    bare = tep()
    del bare["status"]
    assert claim_of(bare) == Claim("ns-a/a", X, KA, T1)


HELD = {"connection": {"status": "Connected", "peerConfiguration": {"clusterID": X, "publicKey": KA, "port": "51840"}}}


@pytest.mark.parametrize(
    ("status", "cluster_id", "kept"),
    [
        (HELD, X, {"clusterID": X, "publicKey": KA}),  # an invalid edit of other fields
        (HELD, Y, None),  # the spec moved to another cluster id
        (HELD, "", None),  # no cluster id any more
        ({"connection": {"status": "Error", "peerConfiguration": {"clusterID": X}}}, X, {"clusterID": X, "publicKey": ""}),
        ({"connection": {"status": "Connected", "peerConfiguration": {"endpointIP": "192.0.2.2"}}}, X, None),  # an older gateway's status
        (err(Verdict("ns-b/b", X, by_key=False).message(X)), X, None),
        (None, X, None),
    ],
)
def test_record_to_keep(status: Any, cluster_id: str, kept: dict[str, str] | None) -> None:
    assert record_to_keep(status, cluster_id) == kept
