"""`liqo-gateway status`: one table per cluster (replicas with role and epoch, the Lease, each
TunnelEndpoint), then a diagnosis list with the fix for each finding.

Exit status: 0 healthy (warnings allowed), 1 when a finding is an error (an unreachable API server
included), 2 on usage errors (bad flags, a kubeconfig or context that cannot be loaded).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from services.common.vocabulary import GATEWAY_SELECTOR_STRING, KEY_SECRET, netagent_socket
from services.status.diagnose import DEFAULT_ERROR_GRACE, Options, diagnose, has_errors
from services.status.gather import Scope, Target, default_kubeconfig, gather, open_client
from services.status.render import render_json, render_text
from services.status.report import build_report

EXIT_HEALTHY, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
DEFAULT_NAMESPACE = "liqo"  # the chart's documented namespace (README "Install with Helm")

EPILOG = f"""\
exit status: {EXIT_HEALTHY} healthy (warnings allowed), {EXIT_FINDINGS} when a finding is an error (an
unreachable API server included), {EXIT_USAGE} on usage errors (bad flags, a kubeconfig or context
that cannot be loaded).

examples:
  liqo-gateway status
  liqo-gateway status --kubeconfig a=~/.kube/a --kubeconfig b=~/.kube/b --output json
  liqo-gateway status --netagent-socket gateway-7d9f-abc=/var/lib/kubelet/pods/UID/volumes/\\
kubernetes.io~empty-dir/netagent-private/private/netagent.sock
"""


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liqo-gateway", description="Liqo gateway operator commands.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser(
        "status", help="show the gateways of one or more clusters and diagnose them",
        description="One table per cluster (gateway replicas with their label, netagent role and "
        "epoch; the Lease holder and its age; each TunnelEndpoint with status, latency, handshake "
        "age, bytes and NAT entries), then a diagnosis list, each finding with its fix.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--kubeconfig", action="append", default=[], metavar="[NAME=]PATH",
                   help="a cluster's kubeconfig; repeat for several clusters (NAME labels its table, "
                   "else the context's name) (default: $KUBECONFIG, ~/.kube/config, else the in-cluster "
                   "service account)")
    s.add_argument("--context", default=None,
                   help="kubeconfig context to use (default: each kubeconfig's current context)")
    s.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE,
                   help="namespace of the gateway pods, Service, Lease and key Secret (default: %(default)s)")
    s.add_argument("--selector", default=GATEWAY_SELECTOR_STRING,
                   help="label selector of the gateway pods (default: %(default)s)")
    s.add_argument("--service", default="",
                   help="name of the gateway Service (default: every Service in the namespace whose "
                   "selector uses net.liqo.io/gateway)")
    s.add_argument("--key-secret", default=KEY_SECRET,
                   help="name of the WireGuard key Secret (default: %(default)s)")
    s.add_argument("--netagent-socket", action="append", default=[], metavar="[[CLUSTER/]POD=]PATH",
                   help="a netagent's operator socket (every method; e.g. "
                   f"{netagent_socket('netagent')} inside the netagent container), read for the "
                   "replica's role, epoch, MTU and the tunnels' handshake, bytes and NAT entries; "
                   "repeatable. POD names the gateway pod it belongs to (env POD_NAME when left out); "
                   "CLUSTER is needed with several --kubeconfig (default: none, the command reports what "
                   "Kubernetes says)")
    s.add_argument("--error-grace", type=float, default=DEFAULT_ERROR_GRACE, metavar="SECONDS",
                   help="a TunnelEndpoint in Error for longer than this is an error finding "
                   "(default: %(default)g)")
    s.add_argument("--output", "-o", choices=["text", "json"], default="text",
                   help="text tables or one JSON document (default: %(default)s)")
    s.add_argument("--request-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="timeout of each API request (default: %(default)g)")
    return p


def _split(value: str, sep: str) -> tuple[str, str]:
    head, found, tail = value.partition(sep)
    return (head, tail) if found else ("", value)


def targets(args: argparse.Namespace, env: dict[str, str]) -> list[Target]:
    """The clusters to read, with their sockets; UsageError when the flags do not say which."""
    configs = [_split(k, "=") for k in args.kubeconfig] or [("", default_kubeconfig() or "")]
    names: list[str] = []
    for i, (name, path) in enumerate(configs):
        name = name or _context_name(path, args.context) or f"cluster-{i + 1}"
        while name in names:
            name += "'"
        names.append(name)
    sockets: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
    for spec in args.netagent_socket:
        owner, path = _split(spec, "=")
        cluster, pod = _split(owner, "/")
        if not path:
            raise UsageError(f"--netagent-socket {spec!r}: no path")
        if not cluster:
            if len(names) > 1:
                raise UsageError(f"--netagent-socket {spec!r}: say which cluster (CLUSTER/POD=PATH) "
                                 "when several --kubeconfig are given")
            cluster = names[0]
        if cluster not in sockets:
            raise UsageError(f"--netagent-socket {spec!r}: no cluster named {cluster!r} "
                             f"(clusters: {', '.join(names)})")
        sockets[cluster].append((pod or env.get("POD_NAME", ""), path))
    return [Target(n, os.path.expanduser(p) if p else None, args.context, tuple(sockets[n]))
            for n, (_, p) in zip(names, configs, strict=True)]


def _context_name(path: str, context: str | None) -> str:
    if context:
        return context
    if not path:
        return "in-cluster"
    try:
        import yaml  # only here: to name the table when no NAME= was given

        with open(os.path.expanduser(path)) as f:
            doc = yaml.safe_load(f) or {}
        return str(doc.get("current-context") or "") if isinstance(doc, dict) else ""
    except (OSError, ValueError):
        return ""  # loading it for real below reports the problem


def run(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad flags
    env = dict(os.environ) if env is None else env
    if args.error_grace < 0 or args.request_timeout <= 0:
        parser.error("--error-grace must be >= 0 and --request-timeout > 0")
    try:
        clusters = targets(args, env)
        clients = [open_client(t, args.request_timeout) for t in clusters]
    except (UsageError, OSError, ValueError) as e:
        print(f"liqo-gateway status: {e}", file=sys.stderr)
        return EXIT_USAGE
    scope = Scope(namespace=args.namespace, selector=args.selector, service=args.service,
                  key_secret=args.key_secret, request_timeout=args.request_timeout)
    try:
        snaps = [gather(t, scope, c) for t, c in zip(clusters, clients, strict=True)]
    finally:
        for c in clients:
            c.close()
    reports = [build_report(s) for s in snaps]
    findings = diagnose(snaps, Options(error_grace=args.error_grace))
    render = render_json if args.output == "json" else render_text
    sys.stdout.write(render(reports, findings))
    return EXIT_FINDINGS if has_errors(findings) else EXIT_HEALTHY


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
