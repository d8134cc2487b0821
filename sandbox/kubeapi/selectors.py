"""Label and field selectors: parsing and matching, as the apiserver does them (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    """A selector string that does not parse (answered with 400 BadRequest)."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects that lack the key, as upstream.
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[A-Za-z0-9_.\-/]+)")
_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SelectorError(f"unable to parse requirement: unexpected character at {pos} in {text!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _check_key(key: str) -> str:
    if not _KEY.match(key) or len(key.split("/")[-1]) > 63:
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r}")
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h``."""
    if not text or not text.strip():
        return LabelSelector()
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(toks):
            raise SelectorError(f"unable to parse requirement: unexpected end of {text!r}")
        i += 1
        return toks[i - 1]

    while i < len(toks):
        tok = take()
        if tok == "!":
            reqs.append(Requirement(_check_key(take()), "!exists"))
        else:
            key = _check_key(tok)
            nxt = toks[i] if i < len(toks) else ","
            if nxt == ",":
                reqs.append(Requirement(key, "exists"))
            elif nxt in ("=", "==", "!="):
                take()
                value = take() if i < len(toks) and toks[i] != "," else ""
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", (_check_value(value),)))
            elif nxt in ("in", "notin"):
                take()
                if take() != "(":
                    raise SelectorError(f"unable to parse requirement: expected '(' in {text!r}")
                values: list[str] = []
                while True:
                    v = take()
                    if v == ")":
                        break
                    if v == ",":
                        continue
                    values.append(_check_value(v))
                reqs.append(Requirement(key, nxt, tuple(values)))
            else:
                raise SelectorError(f"unable to parse requirement: unexpected {nxt!r} in {text!r}")
        if i < len(toks):
            if toks[i] != ",":
                raise SelectorError(f"unable to parse requirement: expected ',' in {text!r}")
            i += 1
    return LabelSelector(tuple(reqs))


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, value_of: Callable[[str], str]) -> bool:
        """``value_of(field)`` gives the object's value for a field ("" when absent)."""
        return all((value_of(r.field) == r.value) != r.negate for r in self.requirements)


def parse_field_selector(text: str | None, supported: Callable[[str], bool]) -> FieldSelector:
    """Parse ``metadata.name=x,spec.nodeName!=y``; fields not ``supported`` are an error, as upstream."""
    if not text or not text.strip():
        return FieldSelector()
    reqs: list[FieldRequirement] = []
    for part in text.split(","):
        part = part.strip()
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(!=|==|=)\s*(.*)$", part)
        if m is None:
            raise SelectorError(f"invalid selector: {part!r}; can't understand {part!r}")
        field, op, value = m.groups()
        if not supported(field):
            raise SelectorError(f"field label not supported: {field}")
        reqs.append(FieldRequirement(field, value, op == "!="))
    return FieldSelector(tuple(reqs))


def lookup(obj: Mapping[str, Any], dotted: str) -> str:
    """The string value at a dotted path, "" when absent (how field selectors see objects)."""
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return "" if cur is None or isinstance(cur, (dict, list)) else str(cur)
