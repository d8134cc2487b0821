"""The chart through the real Helm engine: strict lint, a render matrix valid for Kubernetes 1.27
through 1.33 (kubernetes-validate, strict: unknown fields refused), values the schema refuses, and
each container's flags parsed by that service's own argument parser."""

from __future__ import annotations

import argparse
import re
from typing import Any

import kubernetes_validate
import pytest

from sandbox.testkit import chart
from services.common.kube import RuntimeConfig
from services.common.leaderelection import PROFILES
from services.labeler.main import build_parser as labeler_parser
from services.labeler.main import check as labeler_check
from services.natmap.main import build_parser as natmap_parser
from services.netagent.main import build_parser as netagent_parser
from services.netagent.main import config_from_args, socket_specs
from services.tunnel.main import build_parser as tunnel_parser

KUBE_VERSIONS = ["1.27.0", "1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
MONITORING = "monitoring.coreos.com/v1"

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": chart.values(),
    "nodeport": chart.values(service={"type": "NodePort", "nodePort": 31871}),
    "nodeport-any": chart.values(service={"type": "NodePort"}),
    "replicas-1": chart.values(replicas=1),
    "replicas-3": chart.values(replicas=3),
    "capabilities": chart.values(netagent={"privileged": False}),
    "kernel": chart.values(wireguard={"implementation": "kernel"}),
    "userspace": chart.values(wireguard={"implementation": "userspace"}),
    "auto": chart.values(wireguard={"implementation": "auto"}),
    "sandbox": chart.PODMAN_VALUES,
    "fast-election": chart.values(replicas=2, election={"profile": "fast"}),
    "everything": chart.values(
        replicas=2, priorityClassName="system-node-critical", nodeSelector={"liqo.io/gateway": "true"},
        tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                      "effect": "NoSchedule"}],
        imagePullSecrets=[{"name": "regcred"}], podLabels={"team": "net"}, podAnnotations={"a": "b"},
        service={"annotations": {"metallb.universe.tf/loadBalancerIPs": "192.0.2.1"}, "labels": {"x": "y"}},
        serviceAccount={"name": "gw", "annotations": {"k": "v"}},
        metrics={"serviceMonitor": {"labels": {"release": "prom"}, "interval": "15s"},
                 "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Liqo"}}},
        wireguard={"mtu": 1420, "listenPort": 51820}, image={"tag": "", "pullPolicy": "Always"},
    ),
}


def test_lint_strict() -> None:
    messages = chart.lint(strict=True)
    assert all(m["severity"] < 2 for m in messages), messages


def test_lint_with_the_defaults_passes_but_rendering_them_names_the_missing_value() -> None:
    """Helm's lint mode only logs a `required` that fails (so `helm lint` of the bare chart passes);
    an install or a render fails with the message."""
    chart.lint({}, strict=True)
    with pytest.raises(chart.ChartRenderError,
                       match=r"networking\.podCIDR is required: this cluster's pod CIDR"):
        chart.render({})


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_object_is_valid_kubernetes(case: str, kube: str) -> None:
    objects = chart.render(MATRIX[case], kube_version=kube, api_versions=[MONITORING])
    kinds = sorted(o["kind"] for o in objects)
    want = ["ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "RoleBinding", "Service", "Service",
            "ServiceAccount", "ServiceMonitor"]
    if MATRIX[case].get("replicas", 1) > 1:
        want.append("PodDisruptionBudget")
    if MATRIX[case].get("metrics", {}).get("grafanaDashboard", {}).get("enabled"):
        want.append("ConfigMap")
    assert kinds == sorted(want)
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == MONITORING  # a custom resource: no schema to check against
            continue
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid in {kube}: {path}: {e.message}")


def test_the_kubernetes_version_reaches_the_templates() -> None:
    """Capabilities are really set: the ServiceMonitor follows the API versions given."""
    assert not chart.by_kind(chart.render(chart.values()), "ServiceMonitor")
    assert chart.by_kind(chart.render(chart.values(), api_versions=[MONITORING]), "ServiceMonitor")
    off = chart.values(metrics={"serviceMonitor": {"enabled": False}})
    assert not chart.by_kind(chart.render(off, api_versions=[MONITORING]), "ServiceMonitor")
    no_svc = chart.values(metrics={"service": {"enabled": False}})
    assert not chart.by_kind(chart.render(no_svc, api_versions=[MONITORING]), "ServiceMonitor")


# --- the schema ------------------------------------------------------------------------------------

NEGATIVES: list[tuple[str, dict[str, Any], str]] = [
    ("replicas 0", {"replicas": 0}, r"at '/replicas': minimum: got 0, want 1"),
    ("replicas not a number", {"replicas": "2"}, r"at '/replicas': got string, want integer"),
    ("MTU below 1280", {"wireguard": {"mtu": 1279}}, r"at '/wireguard/mtu': minimum: got 1,279, want 1,280"),
    ("MTU above 9000", {"wireguard": {"mtu": 9001}}, r"at '/wireguard/mtu': maximum: got 9,001, want 9,000"),
    ("listen port 0", {"wireguard": {"listenPort": 0}}, r"at '/wireguard/listenPort': minimum"),
    ("listen port 65536", {"wireguard": {"listenPort": 65536}}, r"at '/wireguard/listenPort': maximum"),
    ("metrics port", {"ports": {"metrics": {"tunnel": 70000}}}, r"at '/ports/metrics/tunnel': maximum"),
    ("health port", {"ports": {"health": {"labeler": -1}}}, r"at '/ports/health/labeler': minimum"),
    ("service port", {"service": {"port": 0}}, r"at '/service/port': minimum"),
    ("node port", {"service": {"type": "NodePort", "nodePort": 65536}}, r"at '/service/nodePort': maximum"),
    ("unknown service type", {"service": {"type": "ExternalName"}},
     r"at '/service/type': value must be one of 'LoadBalancer', 'NodePort'"),
    ("ClusterIP", {"service": {"type": "ClusterIP"}},
     r"at '/service/type': value must be 'LoadBalancer or NodePort: a ClusterIP gateway Service "
     r"is refused, because Liqo peering refuses it"),
    ("unknown implementation", {"wireguard": {"implementation": "wireguard-go"}},
     r"at '/wireguard/implementation': value must be one of 'auto', 'kernel', 'userspace'"),
    ("root controller", {"tunnel": {"runAsUser": 0}}, r"at '/tunnel/runAsUser': minimum: got 0, want 1"),
    ("bad CIDR", {"networking": {"podCIDR": "10.0.0.0/33"}},
     r"at '/networking/podCIDR': '10.0.0.0/33' does not match"),
    ("unknown top-level key", {"replica": 2}, r"at '': additional properties 'replica' not allowed"),
    ("unknown nested key", {"netagent": {"privilege": False}},
     r"at '/netagent': additional properties 'privilege' not allowed"),
    ("unknown port", {"ports": {"metrics": {"geneve": 1}}},
     r"at '/ports/metrics': additional properties 'geneve' not allowed"),
    ("unknown resource", {"labeler": {"resources": {"limits": {"gpu": 1}}}},
     r"invalid propertyName 'gpu'\n.*value must be one of 'cpu', 'memory', 'ephemeral-storage'"),
    ("extraArgs not strings", {"tunnel": {"extraArgs": [1]}},
     r"at '/tunnel/extraArgs/0': got number, want string"),
    ("relative host path", {"netagent": {"netnsHostPath": "run/netns"}}, r"at '/netagent/netnsHostPath'"),
    ("unknown dashboard key", {"metrics": {"grafanaDashboard": {"folder": "x"}}},
     r"at '/metrics/grafanaDashboard': additional properties 'folder' not allowed"),
    ("dashboard namespace", {"metrics": {"grafanaDashboard": {"namespace": "Monitoring"}}},
     r"at '/metrics/grafanaDashboard/namespace': 'Monitoring' does not match"),
    ("bad toleration", {"tolerations": [{"key": "a", "operator": "Maybe"}]}, r"at '/tolerations/0/operator'"),
    ("unknown election profile", {"election": {"profile": "faster"}},
     r"at '/election/profile': value must be one of 'default', 'fast'"),
    ("fractional lease", {"election": {"leaseDuration": 2.5}},
     r"at '/election/leaseDuration': got number, want null or integer"),
    ("zero retry period", {"election": {"retryPeriod": 0}}, r"at '/election/retryPeriod': exclusiveMinimum"),
    ("unknown election key", {"election": {"lease": 2}},
     r"at '/election': additional properties 'lease' not allowed"),
]


@pytest.mark.parametrize(("why", "bad", "message"), NEGATIVES, ids=[n[0] for n in NEGATIVES])
def test_the_schema_refuses(why: str, bad: dict[str, Any], message: str) -> None:
    with pytest.raises(chart.ChartValuesError, match=message):
        chart.render(chart.values(**bad))


def test_the_cidrs_are_required_with_a_reason() -> None:
    for key in ("podCIDR", "externalCIDR", "serviceCIDR"):
        v = chart.values()
        v["networking"][key] = ""
        with pytest.raises(chart.ChartRenderError, match=rf"networking\.{key} is required: this cluster's"):
            chart.render(v)


def test_the_schema_closes_every_object() -> None:
    """additionalProperties is given for every object of the schema (false, or a value schema for
    the free-form maps: labels, annotations, node selector, resource quantities)."""
    import json

    schema = json.loads((chart.CHART / "values.schema.json").read_text())

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert "additionalProperties" in node, f"{where}: open object"
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(schema, "")
    assert schema["additionalProperties"] is False


def test_values_are_documented_key_by_key() -> None:
    """Every value of values.yaml (a key with its value on its line) has a comment right above it,
    or sits under a key that has one."""
    lines = (chart.CHART / "values.yaml").read_text().splitlines()
    commented: dict[int, bool] = {}  # indentation -> whether the enclosing key there has a comment
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w-]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        commented = {k: v for k, v in commented.items() if k < indent}
        own = i > 0 and lines[i - 1].strip().startswith("#")
        commented[indent] = own
        leaf = m.group(3).split("#")[0].strip() != ""
        if leaf and not any(commented.values()):
            undocumented.append(m.group(2))
    assert not undocumented, f"values without a comment: {undocumented}"


# --- each container's flags, through its own parser --------------------------------------------------

PARSERS = {"netagent": netagent_parser, "wireguard": netagent_parser, "tunnel": tunnel_parser,
           "natmap": natmap_parser, "labeler": labeler_parser}
COMMANDS = {"netagent": "liqo-netagent", "wireguard": "liqo-netagent", "tunnel": "liqo-tunnel-controller",
            "natmap": "liqo-natmap-controller", "labeler": "liqo-labeler"}
ARG_CASES = {"defaults": chart.values(), "sandbox": chart.PODMAN_VALUES,
             "capabilities": MATRIX["capabilities"], "kernel": MATRIX["kernel"],
             "everything": MATRIX["everything"]}


class ArgError(Exception):
    pass


def parse(container: str, args: list[str]) -> argparse.Namespace:
    parser = PARSERS[container]()

    def error(message: str) -> None:
        raise ArgError(f"{parser.prog}: {message}")

    parser.error = error  # type: ignore[method-assign,assignment]
    return parser.parse_args(args)


@pytest.mark.parametrize("container", sorted(PARSERS))
@pytest.mark.parametrize("case", sorted(ARG_CASES))
def test_each_container_parses_its_args(case: str, container: str) -> None:
    v = ARG_CASES[case]
    c = chart.containers(chart.render(v))[container]
    assert c["command"] == [COMMANDS[container]]
    args = parse(container, c["args"])
    if container in ("netagent", "wireguard"):
        assert args.wireguard_implementation == v.get("wireguard", {}).get("implementation", "auto")
    if container == "netagent":
        cfg = config_from_args(args)
        socket_specs(cfg)  # distinct socket paths
        assert (str(cfg.pod_cidr), str(cfg.external_cidr), str(cfg.service_cidr)) == (
            v["networking"]["podCIDR"], v["networking"]["externalCIDR"], v["networking"]["serviceCIDR"])
        assert cfg.socket_group == 10000
    if container == "tunnel":
        wg = v.get("wireguard", {})
        assert (args.mtu, args.listen_port) == (wg.get("mtu", 1340), wg.get("listenPort", 5871))


def test_wrong_flags_fail_the_parse() -> None:
    """The check above can fail: a misspelt flag is refused by the real parser."""
    with pytest.raises(ArgError, match="unrecognized arguments: --netagent-sockets"):
        parse("tunnel", ["--netagent-sockets=/x"])
    with pytest.raises(ArgError, match=r"--pod-cidr: '10\.0\.0\.1/16' is not a canonical IPv4 CIDR"):
        parse("netagent", ["serve", "--pod-cidr=10.0.0.1/16"])


# --- the election profile ------------------------------------------------------------------------------


POD_ENV = {"POD_NAME": "gw-0", "POD_NAMESPACE": "liqo", "POD_IP": "10.0.0.5"}


def labeler_args(v: dict[str, Any]) -> argparse.Namespace:
    return parse("labeler", chart.containers(chart.render(v))["labeler"]["args"])


def election(args: argparse.Namespace) -> tuple[float, ...]:
    return (args.lease_duration, args.renew_deadline, args.retry_period, args.election_request_timeout,
            args.outage_grace)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_election_profile_renders_the_labelers_timings(profile: str) -> None:
    """The chart's presets are the product's (services/common/leaderelection.py PROFILES), and the
    labeler's own validation accepts them."""
    p = PROFILES[profile]
    args = labeler_args(chart.values(election={"profile": profile}))
    t = p.timings
    assert election(args) == (t.lease_duration, t.renew_deadline, t.retry_period, p.request_timeout,
                              t.outage_grace)
    assert election(parse("labeler", p.flags())) == election(args)
    labeler_check(args, RuntimeConfig.from_args(args, POD_ENV))


def test_the_election_defaults_to_liqos_timings_and_overrides_win() -> None:
    assert election(labeler_args(chart.values())) == election(parse("labeler", PROFILES["default"].flags()))
    over = {"profile": "fast", "leaseDuration": 3, "outageGrace": 1.5}
    assert election(labeler_args(chart.values(election=over))) == (3, 1.5, 0.25, 0.4, 1.5)
    # extraArgs come last: argparse keeps the last occurrence.
    v = chart.values(election={"profile": "fast"}, labeler={"extraArgs": ["--outage-grace=2"]})
    assert labeler_args(v).outage_grace == 2


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"profile": "fast", "retryPeriod": 1.5}, r"need retryPeriod \(1\.5\) < renewDeadline \(1\.5\)"),
        ({"renewDeadline": 8}, r"< leaseDuration \(7\)"),
        ({"profile": "fast", "requestTimeout": 1},
         r"need max\(retryPeriod, 2 x requestTimeout\) \+ requestTimeout < leaseDuration"),
    ],
)
def test_election_timings_that_cannot_work_fail_the_install(over: dict[str, Any], message: str) -> None:
    with pytest.raises(chart.ChartRenderError, match=message):
        chart.render(chart.values(election=over))

