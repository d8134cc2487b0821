"""Every metric the chart's Grafana dashboard names is exported by the code.

The names come from every PromQL `expr` of the dashboard (and its templating queries), as written:
a histogram's `_bucket`/`_sum`/`_count`, a counter's `_total` (sandbox/testkit/promql.py). What is
exported comes from the processes' own registries, wired by the processes' own code: the netagent's
NetagentMetrics bound to an agent with a tunnel (so its per-tunnel series exist), and each
controller's Manager after its `main.build` (the same `build` the process runs), read as the /metrics
text they serve. The root e2e tests do the same against real processes' /metrics
(tests/controllers/test_tunnel_metrics_e2e.py, test_labeler_kubeapi.py)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
from kubernetes import client as k8s_client
from prometheus_client.exposition import generate_latest

from sandbox.testkit import promql
from sandbox.testkit.chart import CHART
from services.common.component import Component, Runtime, parse_config
from services.common.kube import KubeClient, Manager
from services.common.netagent_client import NetAgentClient
from services.common.prometheus import exposition
from services.labeler import main as labeler_main
from services.natmap import main as natmap_main
from services.netagent.metrics import NetagentMetrics, PeerRecord
from services.tunnel import main as tunnel_main

DASHBOARD = CHART / "dashboards" / "liqo-gateway.json"

# What the dashboard must chart (failover, time to Connected, per-peer traffic, handshake age and latency),
# and the process that must export each.
REQUIRED = {
    "liqo_labeler_failover_duration_seconds_bucket": "labeler",
    "liqo_labeler_no_active_replica_seconds_total": "labeler",
    "liqo_tunnel_apply_to_connected_seconds_bucket": "tunnel",
    "liqo_peer_receive_bytes_total": "netagent",
    "liqo_peer_transmit_bytes_total": "netagent",
    "liqo_peer_handshake_age_seconds": "netagent",
    "liqo_peer_latency_us": "netagent",
}


def referenced(dashboard: dict[str, object]) -> dict[str, list[str]]:
    """metric name -> where the dashboard uses it."""
    out: dict[str, list[str]] = {}
    for where, query in promql.dashboard_queries(dashboard):
        for name in promql.metric_names(query):
            out.setdefault(name, []).append(where)
    return out


def unexported(dashboard: dict[str, object], exported: set[str]) -> dict[str, list[str]]:
    return {n: w for n, w in sorted(referenced(dashboard).items()) if n not in exported}


# --- what the processes export -------------------------------------------------------------------


def netagent_exposition() -> tuple[str, str]:
    """(what the netagent serves, what the library writes for the same registry)."""
    m = NetagentMetrics()
    peer = PeerRecord(cluster_id="c1", cluster_name="one", connected=True, latency_s=0.001, rx_bytes=1,
                      tx_bytes=2, handshake_age_s=3.0)
    m.bind_sources(lambda: [peer], implementation=lambda: "wireguard-go", role=lambda: "active")
    m.observe_rpc("GetInfo", "OK", 0.001)
    m.observe_apply("iptables", 0.001)
    return m.exposition().decode(), generate_latest(m.registry).decode()


CONTROLLERS: dict[str, tuple[ModuleType, Callable[[ModuleType], Component]]] = {
    "labeler": (labeler_main, lambda mod: Component("liqo-labeler", mod.build_parser(), check=mod.check)),
    "tunnel": (tunnel_main, lambda mod: Component("liqo-tunnel-controller", mod.build_parser())),
    "natmap": (natmap_main, lambda mod: Component("liqo-natmap-controller", mod.build_parser())),
}


def controller_exposition(name: str, sock_dir: str) -> tuple[str, str]:
    """The /metrics text of a controller wired by its own `build` (nothing started: no API server or
    netagent is contacted; the registries are complete once built), and the library's for it."""
    module, component = CONTROLLERS[name]
    _args, cfg = parse_config(component(module), ["--netagent-socket", f"{sock_dir}/{name}.sock"])
    cfg_api = k8s_client.Configuration()
    cfg_api.host = "http://127.0.0.1:9"  # never dialled
    kube = KubeClient(k8s_client.ApiClient(cfg_api), timeout=1)
    netagent = NetAgentClient(f"{sock_dir}/{name}.sock")
    try:
        mgr = Manager(f"liqo-{name}", kube)
        module.build(Runtime(_args, cfg, mgr, netagent))
        registry = mgr.metrics.registry
        return exposition(registry).decode(), generate_latest(registry).decode()
    finally:
        netagent.close()
        kube.close()


@pytest.fixture(scope="module")
def both_expositions() -> Iterator[dict[str, tuple[str, str]]]:
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory(prefix="liqo-dash-") as tmp:
        for var, value in (("POD_NAME", "gw-0"), ("POD_NAMESPACE", "liqo"), ("POD_IP", "192.0.2.1")):
            mp.setenv(var, value)
        out = {"netagent": netagent_exposition()}
        out.update({name: controller_exposition(name, tmp) for name in CONTROLLERS})
        yield out


@pytest.fixture(scope="module")
def expositions(both_expositions: dict[str, tuple[str, str]]) -> dict[str, str]:
    """What each process serves on /metrics."""
    return {name: ours for name, (ours, _library) in both_expositions.items()}


@pytest.mark.parametrize("process", ["netagent", *CONTROLLERS])
def test_each_process_serves_what_the_library_would_write(
        both_expositions: dict[str, tuple[str, str]], process: str) -> None:
    """The processes write the text format themselves (services.common.prometheus, to leave out the
    library's HTTP modules): byte for byte the library's `generate_latest`."""
    ours, library = both_expositions[process]
    assert "# TYPE" in ours
    assert ours == library


@pytest.fixture(scope="module")
def exported(expositions: dict[str, str]) -> set[str]:
    return set().union(*(promql.exported_names(text) for text in expositions.values()))


def dashboard() -> dict[str, object]:
    d: dict[str, object] = json.loads(DASHBOARD.read_text())
    return d


# --- the contract --------------------------------------------------------------------------------


def test_every_metric_the_dashboard_names_is_exported(exported: set[str]) -> None:
    d = dashboard()
    assert len(referenced(d)) >= len(REQUIRED)
    missing = unexported(d, exported)
    assert not missing, f"the dashboard names metrics nobody exports: {missing}"


def test_the_dashboard_charts_what_the_issue_asks_for(expositions: dict[str, str]) -> None:
    names = referenced(dashboard())
    for name, process in REQUIRED.items():
        assert name in names, f"the dashboard does not chart {name}"
        assert name in promql.exported_names(expositions[process]), f"{process} does not export {name}"


def test_the_check_fails_on_a_metric_nobody_exports(exported: set[str]) -> None:
    """The contract can fail: a typo, a counter without _total, a histogram without _bucket."""
    d = dashboard()
    planted = [
        "rate(liqo_peer_receive_bytes[5m])",  # the family name: the series is _total
        "histogram_quantile(0.9, rate(liqo_labeler_failover_duration_seconds[5m]))",
        'sum by (le) (liqo_tunnel_apply_to_conected_seconds_bucket{namespace="x"})',
    ]
    d["panels"] = [*d["panels"], {"type": "row", "title": "collapsed", "panels": [  # type: ignore[list-item]
        {"type": "timeseries", "title": "planted", "targets": [{"refId": "A", "expr": e} for e in planted]}]}]
    assert sorted(unexported(d, exported)) == [
        "liqo_labeler_failover_duration_seconds", "liqo_peer_receive_bytes",
        "liqo_tunnel_apply_to_conected_seconds_bucket",
    ]


def test_a_process_losing_a_metric_fails_the_check(expositions: dict[str, str]) -> None:
    """Without the labeler's registry, its metrics are reported (the comparison uses real exports)."""
    others = set().union(*(promql.exported_names(t) for n, t in expositions.items() if n != "labeler"))
    missing = unexported(dashboard(), others)
    assert "liqo_labeler_failover_duration_seconds_bucket" in missing
    assert all(n.startswith("liqo_labeler_") for n in missing)


@pytest.mark.parametrize(("expr", "names"), [
    ('sum(liqo_netagent_role{role="active", namespace=~"$namespace"})', {"liqo_netagent_role"}),
    ("histogram_quantile(0.95, sum by (le, method) (rate(a_bucket{x=~\"${ns}\"}[$__rate_interval])))",
     {"a_bucket"}),
    ("max by (cluster_name) (a) / on (pod) group_left(implementation) b * 1e6 > bool 0", {"a", "b"}),
    ("sum without (pod) (increase(a_total[1h] offset 5m)) or vector(0)", {"a_total"}),
    ('{__name__="by_name", job="x"} unless absent(c:recorded:rate5m)', {"by_name", "c:recorded:rate5m"}),
    ("count(up == 1) and topk(3, d)", {"up", "d"}),
    ("label_values(liqo_netagent_role, namespace)", {"liqo_netagent_role"}),
    ("label_values(namespace)", set()),
    ('rate(e_total{msg="sum(by) (x)"}[5m:30s])', {"e_total"}),
])
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert promql.metric_names(expr) == names


def test_exported_names_read_types_and_samples() -> None:
    text = (
        "# HELP a_total c\n# TYPE a_total counter\n"  # a labelled counter without series
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1.0\nh_sum 1.0\nh_count 1.0\n"
        "# TYPE g gauge\ng{x=\"y\"} 2.0\n"
    )
    assert promql.exported_names(text) == {"a_total", "h_bucket", "h_sum", "h_count", "g"}
