"""Table tests for label and field selector parsing and matching."""

from __future__ import annotations

import pytest

from sandbox.kubeapi.selectors import SelectorError, parse_field_selector, parse_label_selector

LABELS = {"app": "gw", "tier": "edge", "env": "prod"}

CASES = [
    ("", True),
    ("app=gw", True),
    ("app==gw", True),
    ("app=other", False),
    ("app!=gw", False),
    ("missing!=x", True),
    ("app in (gw,x)", True),
    ("app in (x, y)", False),
    ("app notin (x)", True),
    ("missing notin (x)", True),
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("!app", False),
    ("app=gw,tier=edge", True),
    ("app=gw,tier=core", False),
    ("app=gw, env in (prod), !x", True),
    ("example.com/role=", False),
]


@pytest.mark.parametrize(("text", "matches"), CASES)
def test_label_selector(text: str, matches: bool) -> None:
    assert parse_label_selector(text).matches(LABELS) is matches


@pytest.mark.parametrize("text", ["app in gw", "app=(", "app in (a", "=x", "a=b c", "bad key!x=1", "a=b=c"])
def test_label_selector_errors(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(text)


def test_field_selector() -> None:
    fields = {"metadata.name": "a", "spec.nodeName": "n1"}
    sel = parse_field_selector("metadata.name=a,spec.nodeName!=n2", lambda f: True)
    assert sel.matches(lambda f: fields.get(f, ""))
    assert not parse_field_selector("spec.nodeName=n2", lambda f: True).matches(lambda f: fields.get(f, ""))
    with pytest.raises(SelectorError, match="not supported"):
        parse_field_selector("spec.other=x", lambda f: f.startswith("metadata."))
