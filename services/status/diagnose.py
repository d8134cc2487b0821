"""The diagnoses: pure functions from `Snapshot`s to `Finding`s, each with the fix for it.

Every check says what it reads; a check whose data is missing (no netagent socket, a read that
failed) stays silent rather than guess, except where the absence itself is the finding (a missing
Secret, a missing label). Severity ERROR makes the command exit 1; WARNING only informs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.leaderelection import parse_time
from services.common.vocabulary import (
    ACTIVE,
    GATEWAY_LABEL,
    KEY_SECRET,
    NODE_IP_ANNOTATION,
    PSA_ENFORCE_LABEL,
    PSA_PRIVILEGED,
    SERVICE_NAME_LABEL,
    cluster_id_of,
)
from services.status.model import (
    AGENT_ACTIVE,
    ERROR,
    JSON,
    WARNING,
    AgentRead,
    Finding,
    SecretState,
    Snapshot,
)
from services.status.report import (
    active_agent,
    format_duration,
    gateway_label,
    key_of,
    labels_of,
    lease_holder,
    live,
    name_of,
    pod_ip,
)

TUNNEL_ERROR = "Error"  # Liqo's status.connection.status of a tunnel without connectivity
DEFAULT_ERROR_GRACE = 60.0


@dataclass(frozen=True)
class Options:
    error_grace: float = DEFAULT_ERROR_GRACE  # seconds a TunnelEndpoint may stay in Error


def _f(snap: Snapshot, severity: str, code: str, message: str, fix: str) -> Finding:
    return Finding(snap.name, severity, code, message, fix)


def _logs(snap: Snapshot, pod: str = "<pod>", container: str = "labeler") -> str:
    return f"kubectl -n {snap.namespace} logs {pod} -c {container}"


def check_reads(snap: Snapshot, opts: Options) -> list[Finding]:
    """Whatever could not be read: every other check is blind there."""
    return [_f(snap, ERROR, "read-failed", e,
               "check the kubeconfig/context, that the API server is reachable and that your user may "
               "read the gateway namespace (pods, services, leases, the key Secret by name) and the "
               "TunnelEndpoints and NatMappings") for e in snap.read_errors]


def check_active(snap: Snapshot, opts: Options) -> list[Finding]:
    """No pod labelled active, or (when every pod's netagent answered) no netagent ACTIVE."""
    pods = live(snap.pods)
    out: list[Finding] = []
    if not pods:
        if not snap.read_errors:
            out.append(_f(snap, ERROR, "no-gateway-pods", f"no gateway pod in namespace {snap.namespace}",
                          f"check the Deployment: kubectl -n {snap.namespace} get deploy,rs,pods and the "
                          f"namespace's Pod Security label ({PSA_ENFORCE_LABEL}={PSA_PRIVILEGED})"))
        return out
    holder = lease_holder(snap)
    if not any(gateway_label(p) == ACTIVE for p in pods):
        who = f"the Lease holder {holder}" if holder else "no Lease holder either"
        out.append(_f(snap, ERROR, "no-active-replica",
                      f"no gateway pod is labelled {GATEWAY_LABEL}={ACTIVE} ({who}): the Service selects "
                      "nothing, the peers' tunnels are down",
                      f"the leader's labeler labels its pod: read {_logs(snap, holder or '<pod>')}; "
                      "a labeler that does not campaign waits for its netagent's configured device "
                      "(check the tunnel controller's logs and the key Secret)"))
    agents = [agent_of_pod(snap, name_of(p)) for p in pods]
    # Judged only when every live pod's netagent answered: an unknown one might be the ACTIVE one.
    if all(a is not None and a.reachable for a in agents) and not any(
            a.reachable and a.role == AGENT_ACTIVE for a in snap.agents):
        out.append(_f(snap, ERROR, "no-active-agent",
                      "every gateway pod's netagent answered and none is ACTIVE: no dataplane forwards",
                      "the leader's labeler grants ACTIVE on every renewal: read "
                      f"{_logs(snap, holder or '<pod>')} (a netagent that refuses the role is named there)"))
    return out


def agent_of_pod(snap: Snapshot, pod: str) -> AgentRead | None:
    return next((a for a in snap.agents if a.pod == pod), None)


def check_two_active(snap: Snapshot, opts: Options) -> list[Finding]:
    out: list[Finding] = []
    labelled = sorted(name_of(p) for p in live(snap.pods) if gateway_label(p) == ACTIVE)
    holder = lease_holder(snap)
    if len(labelled) > 1:
        others = [p for p in labelled if p != holder]
        out.append(_f(snap, ERROR, "two-active-pods",
                      f"{len(labelled)} pods are labelled {GATEWAY_LABEL}={ACTIVE}: {', '.join(labelled)} "
                      f"(Lease holder: {holder or 'none'}); the Service load-balances between them",
                      "only the Lease holder's labeler should label active: look for a second installation "
                      "or labeler selecting the same pods (--gateway-selector), then "
                      + "; ".join(f"kubectl -n {snap.namespace} label pod {p} {GATEWAY_LABEL}=standby "
                                  "--overwrite" for p in others or labelled[1:])))
    active = [a for a in snap.agents if a.reachable and a.role == AGENT_ACTIVE]
    if len(active) > 1:
        names = ", ".join(a.pod or a.socket for a in active)
        out.append(_f(snap, ERROR, "two-active-agents",
                      f"{len(active)} netagents are ACTIVE ({names}): two dataplanes send with the same key "
                      "and the remote peer roams between them",
                      "fencing expires a grant after its TTL; if this persists, a partitioned labeler keeps "
                      "its role within --outage-grace: delete the pod that is not the Lease holder "
                      f"({holder or 'see the Lease'} holds it)"))
    return out


def _selects(selector: dict[str, str], pod: JSON) -> bool:
    labels = labels_of(pod)
    return all(labels.get(k) == v for k, v in selector.items())


def check_service(snap: Snapshot, opts: Options) -> list[Finding]:
    """The gateway Service must select exactly the pod labelled active. Judged from its selector
    against the pods' labels (what the endpoints controller computes), and its
    net.liqo.io/gatewayNodeIP annotation against the active pod's IP."""
    active = [p for p in live(snap.pods) if gateway_label(p) == ACTIVE]
    if len(active) != 1 or snap.read_errors:
        return []  # no active pod, or several: reported by the checks above
    pod = active[0]
    if not snap.services:
        return [_f(snap, WARNING, "no-gateway-service",
                   f"no gateway Service in namespace {snap.namespace} (selecting {GATEWAY_LABEL})",
                   "install it with the chart, or pass --service NAME")]
    out: list[Finding] = []
    for svc in snap.services:
        spec = svc.get("spec") or {}
        selector = spec.get("selector") if isinstance(spec, dict) else None
        selector = selector if isinstance(selector, dict) else {}
        selected = sorted(name_of(p) for p in live(snap.pods) if selector and _selects(selector, p))
        if selected != [name_of(pod)]:
            sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(none)"
            out.append(_f(snap, ERROR, "service-not-active",
                          f"Service {name_of(svc)} (selector {sel}) selects "
                          f"{', '.join(selected) or 'no pod'}, not the active pod {name_of(pod)} alone",
                          f"its selector must be the gateway pods' labels plus {GATEWAY_LABEL}={ACTIVE}: "
                          "helm upgrade the release, or "
                          f"kubectl -n {snap.namespace} edit service {name_of(svc)}"))
        elif snap.endpoint_slices is not None:
            out += _check_endpoints(snap, svc, pod)
        annotation = str((svc.get("metadata") or {}).get("annotations", {}).get(NODE_IP_ANNOTATION) or "")
        if annotation and pod_ip(pod) and annotation != pod_ip(pod):
            out.append(_f(snap, WARNING, "service-annotation-stale",
                          f"Service {name_of(svc)}: {NODE_IP_ANNOTATION}={annotation}, but the active pod "
                          f"{name_of(pod)} is on {pod_ip(pod)}",
                          f"the leader's labeler rewrites it: read {_logs(snap, name_of(pod))}"))
    return out


def _check_endpoints(snap: Snapshot, svc: JSON, pod: JSON) -> list[Finding]:
    """The Service's ready endpoint addresses (EndpointSlices) must be the active pod's IP alone.
    A Service with no slice at all is judged by its selector only (the controller may not run)."""
    slices = (snap.endpoint_slices or {}).get(name_of(svc)) or []
    if not slices:
        return []
    ready = sorted({str(addr) for s in slices for ep in (s.get("endpoints") or [])
                    if (ep.get("conditions") or {}).get("ready") is not False
                    for addr in (ep.get("addresses") or [])})
    if ready == [pod_ip(pod)]:
        return []
    return [_f(snap, ERROR, "service-endpoints-not-active",
               f"Service {name_of(svc)}'s ready endpoints are {', '.join(ready) or 'none'}, not the active "
               f"pod {name_of(pod)} ({pod_ip(pod)})",
               "the endpoints controller follows the label within seconds of a failover; if this "
               f"persists, check kubectl -n {snap.namespace} get endpointslices -l "
               f"{SERVICE_NAME_LABEL}={name_of(svc)} and the active pod's readiness")]


def _error_since(snap: Snapshot, tep: JSON) -> tuple[float | None, str]:
    """When the TunnelEndpoint's current Error began, and from what: the active netagent's
    `state_since` of a DISCONNECTED tunnel (exact); else the object's latest Event when it is a
    Warning (the tunnel controller emits one on every transition into Error); else the status's
    latency timestamp, which is rewritten at most every 30 s during an Error (a lower bound)."""
    agent = active_agent(snap)
    key, cid = key_of(tep), cluster_id_of(tep)
    if agent is not None:
        for t in agent.tunnels:
            if (t.owner == key or (not t.owner and t.cluster_id == cid)) and t.state == "DISCONNECTED" \
                    and t.state_since:
                return t.state_since, "netagent"
    uid = (tep.get("metadata") or {}).get("uid")
    mine = [e for e in snap.events if _involves(e, tep, uid)]
    if mine:
        last = max(mine, key=_event_time)
        if last.get("type") == "Warning" and _event_time(last) > 0:
            return _event_time(last), "event"
    conn = (tep.get("status") or {}).get("connection") or {}
    ts = parse_time((conn.get("latency") or {}).get("timestamp"))
    return (ts, "status") if ts is not None else (None, "")


def _involves(event: JSON, obj: JSON, uid: str | None) -> bool:
    inv = event.get("involvedObject") or {}
    if uid and inv.get("uid"):
        return bool(inv.get("uid") == uid)
    md = obj.get("metadata") or {}
    return bool(inv.get("kind") == "TunnelEndpoint" and inv.get("name") == md.get("name")
                and inv.get("namespace") == md.get("namespace"))


def _event_time(event: JSON) -> float:
    for k in ("lastTimestamp", "eventTime", "firstTimestamp"):
        t = parse_time(event.get(k))
        if t is not None:
            return t
    return 0.0


def check_tunnel_errors(snap: Snapshot, opts: Options) -> list[Finding]:
    out: list[Finding] = []
    for tep in snap.tunnel_endpoints:
        conn = (tep.get("status") or {}).get("connection") or {}
        if conn.get("status") != TUNNEL_ERROR:
            continue
        since, source = _error_since(snap, tep)
        age = None if since is None else max(0.0, snap.now - since)
        if age is not None and age <= opts.error_grace:
            continue
        how_long = ("for an unknown time" if age is None
                    else f"for {'at least ' if source == 'status' else ''}{format_duration(age)}")
        ns, name = key_of(tep).split("/", 1) if "/" in key_of(tep) else ("", key_of(tep))
        out.append(_f(snap, ERROR, "tunnel-error",
                      f"TunnelEndpoint {key_of(tep)} is in Error {how_long} (grace {opts.error_grace:g}s): "
                      f"{conn.get('statusMessage') or 'no message'}",
                      f"kubectl -n {ns} describe tunnelendpoint {name} (its Events say why); check that "
                      "the remote gateway's Service address and UDP port are reachable from this "
                      "cluster's active node, that the remote holds a TunnelEndpoint with this "
                      "cluster's public key, and the tunnel controller's logs"))
    return out


def _mtu_finding(snap: Snapshot, message: str) -> Finding:
    return _f(snap, ERROR, "mtu-mismatch", message,
              "set one MTU everywhere: the chart's wireguard.mtu (the tunnel controller's --mtu) must be "
              "equal on every replica and on both ends, the underlay MTU minus 60 or less")


def check_mtu_replicas(snap: Snapshot, opts: Options) -> list[Finding]:
    """The MTUs the reachable netagents report (GetInfo) must agree: a failover would change it."""
    mtus = {a.pod or a.socket: a.mtu for a in snap.agents if a.reachable and a.mtu}
    if len(set(mtus.values())) <= 1:
        return []
    listed = ", ".join(f"{k} {v}" for k, v in sorted(mtus.items()))
    return [_mtu_finding(snap, f"the replicas' netagents report different MTUs: {listed}")]


def check_key_secret(snap: Snapshot, opts: Options) -> list[Finding]:
    name = snap.key_secret_name or KEY_SECRET
    ref = f"Secret {snap.namespace}/{name}"
    if snap.key_secret is SecretState.MISSING:
        return [_f(snap, ERROR, "key-secret-missing",
                   f"{ref} (the WireGuard key pair all replicas share) does not exist",
                   "restore it from a backup to keep the peers' view of this cluster's key; else the "
                   "tunnel controller creates a new pair within its 10 s device check unless it is down "
                   f"or forbidden (kubectl -n {snap.namespace} logs <pod> -c tunnel), and every peer's "
                   "TunnelEndpoint must then carry the new public key")]
    if snap.key_secret is SecretState.UNUSABLE:
        return [_f(snap, ERROR, "key-secret-unusable",
                   f"{ref} is not a usable key pair: {snap.key_secret_detail}",
                   f"delete it (kubectl -n {snap.namespace} delete secret {name}) so that the tunnel "
                   "controller creates a new one, then give the peers the new public key")]
    if snap.key_secret is SecretState.UNKNOWN and not snap.read_errors:
        return [_f(snap, WARNING, "key-secret-unknown", f"{ref} could not be read: {snap.key_secret_detail}",
                   "run the command with a user that may get that Secret")]
    out: list[Finding] = []
    for a in snap.agents:
        if a.reachable and a.public_key and snap.key_public and a.public_key != snap.key_public:
            out.append(_f(snap, ERROR, "key-mismatch",
                          f"netagent {a.pod or a.socket} uses public key {a.public_key}, the {ref} holds "
                          f"{snap.key_public}",
                          "the tunnel controller re-reads the Secret on every device check: restart it "
                          "on that pod"))
    return out


def check_psa(snap: Snapshot, opts: Options) -> list[Finding]:
    fix = f"kubectl label namespace {snap.namespace} {PSA_ENFORCE_LABEL}={PSA_PRIVILEGED} --overwrite"
    if snap.namespace_obj is None:
        if snap.namespace_error and not snap.read_errors:
            return [_f(snap, WARNING, "psa-unknown",
                       f"namespace {snap.namespace} could not be read: {snap.namespace_error}", fix)]
        return []
    value = labels_of(snap.namespace_obj).get(PSA_ENFORCE_LABEL)
    if value == PSA_PRIVILEGED:
        return []
    what = "has no" if value is None else f"has {PSA_ENFORCE_LABEL}={value}, not the"
    return [_f(snap, ERROR, "psa-label-missing",
               f"namespace {snap.namespace} {what} Pod Security label {PSA_ENFORCE_LABEL}={PSA_PRIVILEGED}: "
               "the gateway pod is hostNetwork with a privileged netagent, so a new pod is refused",
               fix)]


def check_agents(snap: Snapshot, opts: Options) -> list[Finding]:
    return [_f(snap, WARNING, "netagent-unreachable", f"netagent socket {a.socket}: {a.error}",
               "run on the node of that pod, as root, with the pod's operator socket (see the chart's "
               "NOTES.txt)") for a in snap.agents if not a.reachable]


CLUSTER_CHECKS: tuple[Callable[[Snapshot, Options], list[Finding]], ...] = (
    check_reads,
    check_active,
    check_two_active,
    check_service,
    check_tunnel_errors,
    check_mtu_replicas,
    check_key_secret,
    check_psa,
    check_agents,
)


def _own_key(snap: Snapshot) -> str:
    if snap.key_public:
        return snap.key_public
    agent = active_agent(snap)
    return agent.public_key if agent else ""


def check_mtu_peerings(snaps: Sequence[Snapshot], opts: Options) -> list[Finding]:
    """Both ends of a peering must use one MTU. The other end is found among the clusters given on
    the command line by its public key (the TunnelEndpoint's backend_config.publicKey equals that
    cluster's key Secret, or its active netagent's key); each end's MTU is its active netagent's."""
    by_key = {_own_key(s): s for s in snaps if _own_key(s)}
    out: list[Finding] = []
    seen: set[frozenset[str]] = set()
    for snap in snaps:
        mine = active_agent(snap)
        if mine is None or not mine.mtu:
            continue
        for tep in snap.tunnel_endpoints:
            backend = (tep.get("spec") or {}).get("backend_config") or {}
            other = by_key.get(str(backend.get("publicKey") or "")) if isinstance(backend, dict) else None
            theirs = active_agent(other) if other is not None and other is not snap else None
            pair = frozenset((snap.name, other.name if other else ""))
            if other is None or theirs is None or not theirs.mtu or pair in seen:
                continue
            seen.add(pair)
            if theirs.mtu != mine.mtu:
                out.append(_mtu_finding(snap, f"TunnelEndpoint {key_of(tep)}: this end's MTU is {mine.mtu}, "
                                              f"the other end ({other.name}) uses {theirs.mtu}: packets "
                                              "between the two sizes are dropped"))
    return out


def diagnose(snaps: Sequence[Snapshot], opts: Options) -> list[Finding]:
    out = [f for s in snaps for check in CLUSTER_CHECKS for f in check(s, opts)]
    return out + check_mtu_peerings(snaps, opts)


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(f.severity == ERROR for f in findings)
