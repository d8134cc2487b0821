"""prometheus_client's metric classes and registry, without its package `__init__`, and the text
exposition format written out here.

The package's `__init__` imports its exposition module, which brings HTTP servers and clients
(http.server, wsgiref, urllib.request, gzip, email: ~1 MB of RSS in every process) that no
component uses: each serves /metrics through `services.common.httpendpoint`. So `prometheus_client`
is registered as a bare package before its submodules are imported. A name the bare package lacks
(`from prometheus_client import generate_latest` anywhere, a test's or a library's) runs the real
`__init__` into it then: the same objects, only later.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any


def _register_bare_package() -> None:
    if "prometheus_client" in sys.modules:
        return
    spec = importlib.util.find_spec("prometheus_client")
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        return
    origin = spec.origin
    pkg = types.ModuleType("prometheus_client")
    pkg.__file__ = origin
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__package__ = "prometheus_client"
    loaded = False

    def __getattr__(name: str) -> Any:
        nonlocal loaded
        if name.startswith("__") or loaded:
            raise AttributeError(f"module 'prometheus_client' has no attribute {name!r}")
        if importlib.util.find_spec(f"prometheus_client.{name}") is not None:
            return importlib.import_module(f"prometheus_client.{name}")
        loaded = True
        with open(origin, "rb") as f:
            exec(compile(f.read(), origin, "exec"), pkg.__dict__)
        return getattr(pkg, name)

    pkg.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["prometheus_client"] = pkg


_register_bare_package()

# After the registration above, on purpose.
from prometheus_client.metrics import Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.registry import Collector, CollectorRegistry  # noqa: E402
from prometheus_client.samples import Sample  # noqa: E402
from prometheus_client.utils import floatToGoString as _go_float  # noqa: E402

__all__ = [
    "CONTENT_TYPE",
    "Collector",
    "CollectorRegistry",
    "Counter",
    "CounterMetricFamily",
    "Gauge",
    "GaugeMetricFamily",
    "Histogram",
    "Metric",
    "exposition",
    "metrics_route",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Metric types as the text format names them (OpenMetrics' names differ for these).
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_SUFFIXED = {"counter": "_total", "info": "_info"}
_SEPARATE = ("_created", "_gsum", "_gcount")  # OpenMetrics-only samples: a gauge of their own


def _help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _label_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _value(v: float) -> str:
    return str(_go_float(v))  # type: ignore[no-untyped-call]


def _sample_line(s: Sample) -> str:
    labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(s.labels.items()))
    stamp = f" {int(float(s.timestamp) * 1000):d}" if s.timestamp is not None else ""
    name = f"{s.name}{{{labels}}}" if labels else s.name
    return f"{name} {_value(s.value)}{stamp}\n"


def exposition(registry: Collector) -> bytes:
    """The registry in Prometheus' text format (0.0.4), as the library's `generate_latest` writes
    it for metric and label names of the classic character set (the only ones we register)."""
    out: list[str] = []
    for metric in registry.collect():
        name = metric.name + _SUFFIXED.get(metric.type, "")
        kind = _TEXT_TYPES.get(metric.type, metric.type)
        out += [f"# HELP {name} {_help(metric.documentation)}\n", f"# TYPE {name} {kind}\n"]
        separate: dict[str, list[str]] = {}
        for s in metric.samples:
            suffix = next((x for x in _SEPARATE if s.name == metric.name + x), None)
            (separate.setdefault(suffix, []) if suffix else out).append(_sample_line(s))
        for suffix, lines in sorted(separate.items()):
            out += [f"# HELP {metric.name}{suffix} {_help(metric.documentation)}\n",
                    f"# TYPE {metric.name}{suffix} gauge\n", *lines]
    return "".join(out).encode()


def metrics_route(registry: Collector) -> Callable[[], tuple[int, bytes, str]]:
    """GET /metrics: the registry in the text format."""
    return lambda: (200, exposition(registry), CONTENT_TYPE)
