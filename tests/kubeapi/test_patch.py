"""Table tests for merge, JSON and strategic-merge patches."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.kubeapi.patch import PatchError, json_patch, merge_patch, strategic_merge_patch

DOC = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"list": [1, 2], "n": 1}}


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            {"metadata": {"labels": {"a": None, "c": "3"}}},
            {"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"list": [1, 2], "n": 1}},
        ),
        (
            {"spec": {"list": [3]}},
            {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"list": [3], "n": 1}},
        ),
        ({"spec": None}, {"metadata": {"labels": {"a": "1", "b": "2"}}}),
    ],
)
def test_merge_patch(patch: dict[str, Any], expected: dict[str, Any]) -> None:
    before = repr(DOC)
    assert merge_patch(DOC, patch) == expected
    assert repr(DOC) == before  # inputs untouched


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ([{"op": "add", "path": "/spec/list/-", "value": 3}], [1, 2, 3]),
        ([{"op": "add", "path": "/spec/list/0", "value": 0}], [0, 1, 2]),
        ([{"op": "replace", "path": "/spec/list/1", "value": 9}], [1, 9]),
        ([{"op": "remove", "path": "/spec/list/0"}], [2]),
        (
            [
                {"op": "test", "path": "/spec/n", "value": 1},
                {"op": "move", "from": "/spec/list/0", "path": "/spec/list/1"},
            ],
            [2, 1],
        ),
        ([{"op": "copy", "from": "/spec/list/1", "path": "/spec/list/0"}], [2, 1, 2]),
    ],
)
def test_json_patch(ops: list[dict[str, Any]], expected: list[int]) -> None:
    assert json_patch(DOC, ops)["spec"]["list"] == expected


@pytest.mark.parametrize(
    ("ops", "invalid"),
    [
        ([{"op": "test", "path": "/spec/n", "value": 2}], True),
        ([{"op": "remove", "path": "/spec/missing"}], True),
        ([{"op": "replace", "path": "/spec/missing", "value": 1}], True),
        ([{"op": "frobnicate", "path": "/spec"}], False),
        ({"op": "add"}, False),
    ],
)
def test_json_patch_errors(ops: Any, invalid: bool) -> None:
    with pytest.raises(PatchError) as exc:
        json_patch(DOC, ops)
    assert exc.value.invalid is invalid


def test_strategic_merge_patch_merges_keyed_lists_and_directives() -> None:
    pod = {
        "spec": {
            "containers": [
                {"name": "a", "image": "x", "ports": [{"containerPort": 80, "name": "h"}]},
                {"name": "b", "image": "y"},
            ]
        },
        "metadata": {"finalizers": ["f1", "f2"]},
    }
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [
                {"name": "a", "ports": [{"containerPort": 443}]},
                {"name": "b", "$patch": "delete"},
                {"name": "c", "image": "z"},
            ],
        },
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]},
    }
    out = strategic_merge_patch(pod, patch)
    assert out["spec"]["containers"] == [
        {"name": "a", "image": "x", "ports": [{"containerPort": 80, "name": "h"}, {"containerPort": 443}]},
        {"name": "c", "image": "z"},
    ]
    assert out["metadata"]["finalizers"] == ["f2"]
    assert strategic_merge_patch(pod, {"spec": {"$patch": "replace", "x": 1}})["spec"] == {"x": 1}
    assert strategic_merge_patch({"m": {"a": 1, "b": 2}}, {"m": {"$retainKeys": ["a"], "a": 3}}) == {
        "m": {"a": 3}
    }
