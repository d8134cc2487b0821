"""services.common.prometheus writes the text format itself: byte for byte what prometheus_client's
`generate_latest` writes, for every metric type and for hostile label values and help texts."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import Enum, Info, Summary
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeHistogramMetricFamily

from services.common.prometheus import (
    Collector,
    CollectorRegistry,
    Counter,
    CounterMetricFamily,
    Gauge,
    GaugeMetricFamily,
    Histogram,
    Metric,
    exposition,
)

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ['plain', 'quote " inside', "back\\slash", "new\nline", "ünïcödé ✓", "", "}{,=", "\\n literal"]


class _Custom(Collector):
    def collect(self) -> list[Metric]:  # type: ignore[override]
        g = GaugeMetricFamily("liqo_test_custom", "help with \\ and\nnewline", labels=["peer"])
        for i, value in enumerate(HOSTILE):
            g.add_metric([value], float(i) - 2.5)
        g.add_metric(["inf"], math.inf)
        g.add_metric(["-inf"], -math.inf)
        g.add_metric(["nan"], math.nan)
        g.add_metric(["big"], 1.5e21)
        g.add_metric(["stamped"], 7, timestamp=1700000000.123)
        c = CounterMetricFamily("liqo_test_custom_bytes", "counted", labels=["dir"])
        c.add_metric(["rx"], 12345678901234)
        gh = GaugeHistogramMetricFamily("liqo_test_gh", "a gauge histogram", buckets=[("1", 2), ("+Inf", 3)],
                                        gsum_value=4)
        return [g, c, gh]


def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    c = Counter("liqo_test_calls", "calls", ["method", "code"], registry=reg)
    for i, value in enumerate(HOSTILE):
        c.labels(value, "OK").inc(i + 0.5)
    Counter("liqo_test_plain", "no labels", registry=reg).inc()
    g = Gauge("liqo_test_gauge", "a gauge", ["k"], registry=reg)
    g.labels("a").set(-0.0000001)
    g.labels("b").set(123456789.0)
    h = Histogram("liqo_test_seconds", "a histogram", ["op"], buckets=(0.001, 0.5, 10), registry=reg)
    for v in (0.0001, 0.3, 99):
        h.labels("apply").observe(v)
    Summary("liqo_test_summary", "a summary", registry=reg).observe(3)
    Info("liqo_test_build", "build info", registry=reg).info({"version": '1.2 "x"'})
    Enum("liqo_test_state", "a state", states=["up", "down"], registry=reg).state("down")
    reg.register(_Custom())
    return reg


def test_every_type_and_hostile_text_match_the_library() -> None:
    reg = registry()
    ours = exposition(reg)
    assert ours == generate_latest(reg)
    text = ours.decode()
    # Not vacuous: each type and the escapes are in there.
    for needle in ("# TYPE liqo_test_calls_total counter", "# TYPE liqo_test_seconds histogram",
                   "# TYPE liqo_test_summary summary", "# TYPE liqo_test_build_info gauge",
                   "# TYPE liqo_test_gh histogram", 'peer="quote \\" inside"', 'peer="new\\nline"',
                   "help with \\\\ and\\nnewline", "+Inf", "NaN", "1700000000123", "liqo_test_calls_created"):
        assert needle in text, needle


def test_an_empty_registry_is_empty() -> None:
    assert exposition(CollectorRegistry()) == generate_latest(CollectorRegistry()) == b""


def test_importing_it_loads_no_http_module() -> None:
    """The point of writing the format here: the library's package __init__ (and its exposition
    module's HTTP servers and clients) stay out of every process."""
    code = ("import sys, services.common.prometheus as p\n"
            "p.exposition(p.CollectorRegistry())\n"
            "print(' '.join(sorted(sys.modules)))\n")
    cp = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 0, cp.stderr
    loaded = set(cp.stdout.split())
    assert "prometheus_client.metrics" in loaded
    heavy = {"prometheus_client.exposition", "http.server", "wsgiref", "urllib.request", "gzip"}
    assert not heavy & loaded, heavy & loaded


def test_a_library_name_the_bare_package_lacks_still_resolves() -> None:
    """`from prometheus_client import X` after ours ran the real __init__: same objects."""
    code = ("import services.common.prometheus as p\n"
            "from prometheus_client import generate_latest, Counter\n"
            "assert Counter is p.Counter\n"
            "print(generate_latest(p.CollectorRegistry()) == b'')\n")
    cp = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 0 and cp.stdout.strip() == "True", cp.stderr


@pytest.mark.parametrize("value", [0.1, 1e-9, 1e21, 12345678.9, -3.0, 0.0])
def test_values_match_the_library(value: float) -> None:
    reg = CollectorRegistry()
    Gauge("liqo_test_v", "v", registry=reg).set(value)
    assert exposition(reg) == generate_latest(reg)
