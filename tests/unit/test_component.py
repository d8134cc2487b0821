"""Start-up of the three controllers (services/common/component.py and each main's flags), the role
gate and the netagent client's error classes, as tables."""

from __future__ import annotations

import argparse
import importlib
import re
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common.component import Component, parse_config, run_component
from services.common.netagent_client import NetAgentError
from services.common.rolegate import RoleGate
from services.common.vocabulary import GATEWAY_SELECTOR_STRING, KEY_SECRET, LEASE_NAME
from services.labeler import main as labeler
from services.natmap import main as natmap
from services.tunnel import main as tunnel

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "tunnel": tunnel.build_parser,
    "natmap": natmap.build_parser,
    "labeler": labeler.build_parser,
}
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RE = re.compile(r"\(default: (?P<value>.+)\)$", re.DOTALL)


def options(name: str) -> list[tuple[argparse.ArgumentParser, argparse.Action]]:
    p = PARSERS[name]()
    return [(p, a) for a in p._actions if a.option_strings and a.dest != "help"]


def expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    assert action.help, f"{action.option_strings} has no help"
    return " ".join((action.help % {**vars(action), "prog": parser.prog}).split())


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_flag_states_its_default_one_way(name: str) -> None:
    for parser, action in options(name):
        text = expanded_help(parser, action)
        flag = action.option_strings[0]
        m = DEFAULT_RE.search(text)
        assert m, f"{name} {flag}: help must end with '(default: X)': {text!r}"
        assert text.count("(default") == 1, f"{name} {flag}: {text!r}"
        stated = m.group("value")
        if action.default is None or stated.startswith(("env ", "the ")):
            continue  # a default taken from the environment or computed, said in words
        if isinstance(action.default, (int, float)):
            assert float(stated) == float(action.default), f"{name} {flag}: {stated} != {action.default}"
        else:
            assert stated == str(action.default), f"{name} {flag}: says {stated!r}, is {action.default!r}"


def console_scripts() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    """Every console script of pyproject.toml -> its module's build_parser."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: importlib.import_module(target.split(":")[0]).build_parser
            for name, target in scripts.items()}


def parsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and its subcommands' parsers (`liqo-gateway status`), each with its own --help."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += parsers_of(sub)
    return found


def rendered_entries(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(flag, its entry as --help prints it, whitespace collapsed) through the parser's own formatter,
    so a formatter that appends defaults is judged by what it prints."""
    entries = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction,
                                                                    argparse._SubParsersAction)):
            continue
        formatter = parser._get_formatter()
        formatter.add_argument(action)
        flag = (action.option_strings or [action.dest])[0]
        entries.append((flag, " ".join(formatter.format_help().split())))
    return entries


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_every_console_script_prints_each_default_one_way(script: str, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """One help style for every program: each flag's entry ends with "(default: X)", said once, and a
    default of nothing is said in words, never "(default: )", "(default: None)" or "(default: False)"."""
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping: an entry reads the same alone and in --help
    bad = []
    for parser in parsers_of(console_scripts()[script]()):
        full = " ".join(parser.format_help().split())
        for flag, entry in rendered_entries(parser):
            assert entry in full, f"{parser.prog} {flag}: not printed as rendered: {entry!r}"
            m = DEFAULT_RE.search(entry)
            if m is None or entry.count("(default") != 1 or m.group("value").strip() in ("", "None", "False"):
                bad.append(f"{parser.prog} {flag}: {entry!r}")
    assert bad == []


@pytest.mark.parametrize(
    ("name", "flag", "default"),
    [
        # README.md, The controllers: metrics on every address, health (the kubelet's probes) on loopback.
        ("tunnel", "--metrics-bind-address", ":5873"),
        ("natmap", "--metrics-bind-address", ":5874"),
        ("labeler", "--metrics-bind-address", ":5875"),
        ("tunnel", "--health-bind-address", "127.0.0.1:5877"),
        ("natmap", "--health-bind-address", "127.0.0.1:5878"),
        ("labeler", "--health-bind-address", "127.0.0.1:5879"),
        ("tunnel", "--netagent-socket", "/run/liqo/tunnel/netagent.sock"),
        ("natmap", "--netagent-socket", "/run/liqo/natmap/netagent.sock"),
        ("labeler", "--netagent-socket", "/run/liqo/labeler/netagent.sock"),
        ("tunnel", "--wireguard-secret-name", KEY_SECRET),
        ("tunnel", "--dns-refresh-interval", 60.0),
        ("tunnel", "--status-min-interval", 5.0),
        ("natmap", "--workers", 4),
        ("natmap", "--resync-period", 300.0),
        ("labeler", "--lease-name", LEASE_NAME),
        ("labeler", "--gateway-selector", GATEWAY_SELECTOR_STRING),
        ("labeler", "--lease-duration", 7),
        ("labeler", "--outage-grace", 60.0),
        ("labeler", "--election-request-timeout", 1.0),
    ],
)
def test_flag_defaults(name: str, flag: str, default: object) -> None:
    by_flag = {a.option_strings[0]: a for _p, a in options(name)}
    assert by_flag[flag].default == default


MAINS: dict[str, Callable[[list[str] | None], int]] = {
    "tunnel": tunnel.main,
    "natmap": natmap.main,
    "labeler": labeler.main,
}
FULL_ENV = {"POD_NAME": "gw-0", "POD_NAMESPACE": "liqo", "POD_IP": "10.0.0.5"}


@pytest.mark.parametrize(
    ("name", "argv", "unset", "message"),
    [
        ("tunnel", ["--workers", "0"], (), "--workers must be at least 1"),
        ("natmap", ["--retry-base-delay", "5", "--retry-max-delay", "1"], (), "--retry-base-delay"),
        ("natmap", ["--resync-period", "0"], (), "must be positive"),
        ("tunnel", [], ("POD_NAMESPACE",), "POD_NAMESPACE"),
        ("tunnel", [], ("POD_IP",), "POD_IP"),
        ("labeler", ["--lease-duration", "0"], (), "--lease-duration"),
        ("labeler", ["--election-request-timeout", "0"], (), "--election-request-timeout"),
        ("labeler", ["--lease-duration", "2", "--renew-deadline", "1.5", "--retry-period", "0.25"], (),
         "--election-request-timeout"),
        ("labeler", [], ("POD_NAME",), "an identity and a namespace are needed"),
        ("labeler", [], ("POD_NAMESPACE",), "an identity and a namespace are needed"),
    ],
)
def test_a_bad_configuration_prints_one_line_and_exits_2(
    name: str, argv: list[str], unset: tuple[str, ...], message: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    for k, v in FULL_ENV.items():
        monkeypatch.setenv(k, v)
    for k in unset:
        monkeypatch.delenv(k)
    assert MAINS[name](argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"liqo-{name}") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("name", sorted(MAINS))
def test_an_unknown_flag_is_a_usage_error(name: str) -> None:
    with pytest.raises(SystemExit) as e:
        MAINS[name](["--no-such-flag"])
    assert e.value.code == 2


@pytest.mark.parametrize(
    ("argv", "env", "want"),
    [
        ([], FULL_ENV, ("gw-0", "liqo", "10.0.0.5")),
        (["--identity", "me", "--namespace", "ns", "--pod-ip", "10.9.9.9"], FULL_ENV,
         ("me", "ns", "10.9.9.9")),
        (["--identity", "me", "--namespace", "ns"], {}, ("me", "ns", "")),
        (["--pod-ip", ""], FULL_ENV, ("gw-0", "liqo", "")),
    ],
)
def test_labeler_flags_override_the_downward_api(
    argv: list[str], env: dict[str, str], want: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in FULL_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _args, cfg = parse_config(Component("liqo-labeler", labeler.build_parser(), check=labeler.check), argv)
    assert (cfg.pod_name, cfg.pod_namespace, cfg.pod_ip) == want


def test_run_component_builds_runs_and_closes_both_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.common.component as component

    closed: list[str] = []

    class Client:
        @staticmethod
        def from_kubeconfig(path: str | None, *, timeout: float) -> Client:
            return Client()

        def close(self) -> None:
            closed.append("kube")

    class NetAgent:
        def __init__(self, socket: str, **kw: Any) -> None:
            self.socket, self.kw = socket, kw

        def close(self) -> None:
            closed.append("netagent")

    class Mgr:
        def __init__(self, name: str, client: Client, **kw: Any) -> None:
            self.kw = kw

        def run(self) -> int:
            return 0

    monkeypatch.setattr(component, "KubeClient", Client)
    monkeypatch.setattr(component, "NetAgentClient", NetAgent)
    monkeypatch.setattr(component, "Manager", Mgr)
    monkeypatch.setattr(component, "setup_logging", lambda *_a: None)
    for k, v in FULL_ENV.items():
        monkeypatch.setenv(k, v)
    seen: list[Any] = []
    parser = natmap.build_parser()
    spec = Component("liqo-x", parser, netagent_timeout=0.5, netagent_retry_deadline=0.0)
    assert run_component(spec, seen.append, ["--netagent-socket", "/tmp/s", "--metrics-bind-address", "",
                                              "--health-bind-address", ""]) == 0
    (rt,) = seen
    assert rt.netagent.socket == "/tmp/s" and rt.netagent.kw == {"timeout": 0.5, "retry_deadline": 0.0}
    assert rt.mgr.kw["pod_name"] == "gw-0" and rt.mgr.kw["metrics_server"] is None
    assert rt.mgr.kw["health_server"] is None
    assert (rt.backoff.base, rt.backoff.cap) == (0.2, 60.0)
    assert closed == ["netagent", "kube"]

    # A failing build still closes both clients.
    closed.clear()

    def boom(_rt: Any) -> None:
        raise RuntimeError("wiring failed")

    with pytest.raises(RuntimeError):
        run_component(Component("liqo-x", natmap.build_parser()), boom,
                      ["--metrics-bind-address", "", "--health-bind-address", ""])
    assert closed == ["netagent", "kube"]


class FakeController:
    def __init__(self) -> None:
        self.paused = False
        self.resumes = 0

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.resumes += 1
        self.paused = False


class FakeManager:
    def __init__(self) -> None:
        self.runnables: list[str] = []

    def add_runnable(self, name: str, _fn: Callable[[threading.Event], None]) -> None:
        self.runnables.append(name)


@pytest.mark.parametrize(
    ("steps", "paused", "resumes"),
    [
        ([], True, 0),  # paused from the start
        ([("role", True)], False, 1),
        ([("role", True), ("role", False)], True, 1),
        ([("role", True), ("role", False), ("role", True)], False, 2),
        ([("ready", False), ("role", True)], True, 0),  # active but not ready: stays paused
        ([("ready", False), ("role", True), ("ready", True)], False, 1),  # refresh resumes it
        ([("ready", True)], True, 0),  # ready but standby
    ],
)
def test_role_gate(steps: list[tuple[str, bool]], paused: bool, resumes: int) -> None:
    mgr, ctl = FakeManager(), FakeController()
    ready = [True]
    resumed: list[int] = []
    gate = RoleGate(mgr, ctl, object(), ready=lambda: ready[0],  # type: ignore[arg-type]
                    on_resume=lambda: resumed.append(1))
    assert mgr.runnables == ["role-watch"]
    for what, value in steps:
        if what == "role":
            gate.watcher._set(value)
        else:
            ready[0] = value
            gate.refresh()
    assert ctl.paused is paused
    assert ctl.resumes == resumes == len(resumed)
    roles = [v for w, v in steps if w == "role"]
    assert gate.active is (roles[-1] if roles else False)


FP = grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("code", "details", "classes"),
    [
        (FP, "agent is standby: mutations need the ACTIVE role", {"precondition"}),
        (FP, "tunnel for cluster 'b' is not ready", {"precondition"}),
        (FP, "epoch 3 is lower than the current epoch 4", {"precondition", "stale_epoch"}),
        (grpc.StatusCode.INVALID_ARGUMENT, "endpoint: bad", {"invalid"}),
        (grpc.StatusCode.UNAVAILABLE, "", {"unavailable"}),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", {"unavailable"}),
        (FP, "cluster id 'b' is owned by TunnelEndpoint tenant-a/tep-a", {"precondition", "not_owner"}),
        (
            FP,
            "public_key is already used by cluster 'a', which is owned by TunnelEndpoint t/x",
            {"precondition", "not_owner"},
        ),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "tunnels: 256 configured", {"exhausted"}),
    ],
)
def test_netagent_error_classes(code: grpc.StatusCode, details: str, classes: set[str]) -> None:
    e = NetAgentError("M", code, details)
    kinds = ("precondition", "stale_epoch", "invalid", "unavailable", "not_owner", "exhausted")
    got = {c for c in kinds if getattr(e, c)}
    assert got == classes
    if "not_owner" in classes:
        assert e.owner == details.rsplit(" ", 1)[1]
    else:
        assert e.owner == ""
