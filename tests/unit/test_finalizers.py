"""Finalizer helpers and the reconcile prologue (services/common/kube/finalizers.py), as tables."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.common.kube import JSON, MERGE_PATCH, KubeError, RetryableError
from services.common.kube.finalizers import add_finalizer, has_finalizer, prologue, remove_finalizer
from services.common.vocabulary import FINALIZER, NAT_MAPPINGS, TUNNEL_ENDPOINTS, ResourceRef

OTHER = "example.com/other"


class FakeClient:
    """Records merge patches; answers with the patched object, or raises `error`."""

    def __init__(self, error: KubeError | None = None) -> None:
        self.error = error
        self.patches: list[tuple[str, str, JSON, str | None]] = []

    def patch(self, ref: ResourceRef, name: str, body: JSON, namespace: str | None = None, *,
              content_type: str = "") -> JSON:
        assert content_type == MERGE_PATCH
        self.patches.append((ref.plural, name, body, namespace))
        if self.error is not None:
            raise self.error
        md = {"name": name, "namespace": namespace, **body["metadata"], "resourceVersion": "2"}
        return {"metadata": md}


def obj(finalizers: list[str] | None = None, *, deleting: bool = False, namespace: str | None = "ns") -> JSON:
    md: dict[str, Any] = {"name": "x", "resourceVersion": "1"}
    if namespace:
        md["namespace"] = namespace
    if finalizers is not None:
        md["finalizers"] = finalizers
    if deleting:
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": md}


@pytest.mark.parametrize(
    ("finalizers", "want"),
    [(None, False), ([], False), ([OTHER], False), ([FINALIZER], True), ([OTHER, FINALIZER], True)],
)
def test_has_finalizer(finalizers: list[str] | None, want: bool) -> None:
    assert has_finalizer(obj(finalizers), FINALIZER) is want


@pytest.mark.parametrize(
    ("finalizers", "sent"),
    [
        (None, [FINALIZER]),
        ([], [FINALIZER]),
        ([OTHER], [OTHER, FINALIZER]),
        ([FINALIZER], None),  # already there: no call
    ],
)
def test_add_finalizer(finalizers: list[str] | None, sent: list[str] | None) -> None:
    c = FakeClient()
    got = add_finalizer(c, TUNNEL_ENDPOINTS, obj(finalizers), FINALIZER)  # type: ignore[arg-type]
    if sent is None:
        assert c.patches == []
        assert got == obj(finalizers)
    else:
        assert c.patches == [("tunnelendpoints", "x",
                              {"metadata": {"finalizers": sent, "resourceVersion": "1"}}, "ns")]
        assert has_finalizer(got, FINALIZER)


@pytest.mark.parametrize(
    ("finalizers", "sent"),
    [
        ([FINALIZER], []),
        ([OTHER, FINALIZER], [OTHER]),
        ([OTHER], None),  # not ours: no call
        (None, None),
    ],
)
def test_remove_finalizer(finalizers: list[str] | None, sent: list[str] | None) -> None:
    c = FakeClient()
    remove_finalizer(c, TUNNEL_ENDPOINTS, obj(finalizers), FINALIZER)  # type: ignore[arg-type]
    if sent is None:
        assert c.patches == []
    else:
        assert [p[2]["metadata"]["finalizers"] for p in c.patches] == [sent]


def test_cluster_scoped_kinds_are_patched_without_a_namespace() -> None:
    c = FakeClient()
    add_finalizer(c, NAT_MAPPINGS, obj(namespace=None), FINALIZER)  # type: ignore[arg-type]
    assert c.patches[0][0] == "natmappings" and c.patches[0][3] is None


@pytest.mark.parametrize(
    ("error", "raises"),
    [
        (KubeError(404, "NotFound", "gone"), None),  # gone already: nothing left to do
        (KubeError(409, "Conflict", "stale resourceVersion"), RetryableError),
        (KubeError(0, "", "unreachable"), RetryableError),
    ],
)
def test_patch_errors(error: KubeError, raises: type[Exception] | None) -> None:
    c = FakeClient(error)
    o = obj([])
    if raises is None:
        assert add_finalizer(c, TUNNEL_ENDPOINTS, o, FINALIZER) == o  # type: ignore[arg-type]
    else:
        with pytest.raises(raises):
            add_finalizer(c, TUNNEL_ENDPOINTS, o, FINALIZER)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("o", "finalized", "patched", "returned"),
    [
        # live, finalizer missing: added, the patched object is reconciled
        (obj([]), False, [[FINALIZER]], True),
        # live, finalizer present: no call
        (obj([FINALIZER]), False, [], True),
        # deleting with our finalizer: finalize, then the finalizer goes; nothing more to do
        (obj([OTHER, FINALIZER], deleting=True), True, [[OTHER]], False),
        # deleting without our finalizer: not ours to finalize
        (obj([OTHER], deleting=True), False, [], False),
    ],
)
def test_prologue(o: JSON, finalized: bool, patched: list[list[str]], returned: bool) -> None:
    c = FakeClient()
    seen: list[JSON] = []
    got = prologue(c, TUNNEL_ENDPOINTS, copy.deepcopy(o), FINALIZER, seen.append)  # type: ignore[arg-type]
    assert (seen == [o]) is finalized
    assert [p[2]["metadata"]["finalizers"] for p in c.patches] == patched
    assert (got is not None) is returned
    if got is not None:
        assert has_finalizer(got, FINALIZER)


def test_prologue_keeps_the_finalizer_when_finalizing_fails() -> None:
    c = FakeClient()

    def fail(_o: JSON) -> None:
        raise RetryableError("netagent unavailable")

    with pytest.raises(RetryableError):
        prologue(c, TUNNEL_ENDPOINTS, obj([FINALIZER], deleting=True), FINALIZER, fail)  # type: ignore[arg-type]
    assert c.patches == []
