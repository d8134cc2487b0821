"""Metric names as a dashboard's PromQL uses them and as a /metrics page exports them.

`metric_names(expr)` returns the series names an expression selects, exactly as written (a histogram's
`_bucket`, a counter's `_total`): label matchers, strings, ranges, Grafana variables and label lists
(`by (...)`, `on (...)`) are removed first, and what remains is a name unless a `(` follows it (a
function or an aggregation) or it is a PromQL keyword. `exported_names(text)` reads Prometheus' text
format: every sample's name, plus the series each `# TYPE` line declares (a labelled metric with no
series yet declares its family all the same). Comparing the two as exact names is the careful part:
a dashboard asking for `x` when only `x_total` exists selects nothing, and is reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["dashboard_queries", "exported_names", "metric_names"]

_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "atan2", "inf", "nan", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "limitk", "limit_ratio",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])")
# Grafana's templating functions, in variable queries: label_values(metric, label) and friends.
_TEMPLATE_FN = re.compile(r"^\s*(label_values|query_result|metrics|label_names)\s*\((.*)\)\s*$", re.S)
_TYPE_SERIES = {
    "counter": ("",),  # the text format names a counter's family with its _total already
    "gauge": ("",),
    "untyped": ("",),
    "unknown": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana templating query) selects."""
    template = _TEMPLATE_FN.match(expr)
    if template is not None:
        fn, inner = template.groups()
        if fn == "label_values" and "," in inner:
            return metric_names(inner.rsplit(",", 1)[0])
        return metric_names(inner) if fn == "query_result" else set()
    names = set(_NAME_MATCHER.findall(expr))
    s = _STRING.sub('""', expr)
    s = re.sub(r"#[^\n]*", " ", s)
    s = _VARIABLE.sub("1", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _LABEL_LIST.sub(" ", s)
    for m in _IDENT.finditer(s):
        name = m.group(1)
        if s[m.end():].lstrip().startswith("(") or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def exported_names(text: str) -> set[str]:
    """Every series name a page in Prometheus' text format exports or declares."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.update(family + suffix for suffix in _TYPE_SERIES.get(kind.strip(), ("",)))
        elif line and not line.startswith("#"):
            m = re.match(r"[A-Za-z_:][\w:]*", line)
            if m:
                names.add(m.group(0))
    return names


def _panels(panels: Iterable[Any]) -> Iterator[Any]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels") or [])  # a collapsed row keeps its panels inside


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, query) for every panel target's `expr` and every templating variable's query."""
    out: list[tuple[str, str]] = []
    for p in _panels(dashboard.get("panels") or []):
        for t in p.get("targets") or []:
            if t.get("expr"):
                out.append((f"panel {p.get('title')!r} {t.get('refId', '')}", str(t["expr"])))
    for v in (dashboard.get("templating") or {}).get("list") or []:
        q = v.get("query")
        query = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and query:
            out.append((f"variable {v.get('name')!r}", str(query)))
    return out
