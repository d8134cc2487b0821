#!/usr/bin/env python3
"""How long N NAT mapping entries take to apply, four ways, on this machine (root needed):

  (a) through the netagent: SetNatMappings over gRPC to a real liqo-netagent on an emulated node
      (after ConfigureDevice, SetRole, EnsureTunnel), and through the applier alone
      (`Iptables.apply(desired_state(...))`, validation included) in a throwaway netns of a kit node;
  (b) the original's method: one `iptables-legacy -t nat -C` plus one `-A` process per rule, as
      go-iptables' AppendUnique does, run inside the netns (capped by --per-rule-max; the rest is
      extrapolated from the measured per-rule cost, which grows with the table size);
  (c) the floor: one `iptables-legacy-restore --noflush` of the same rules;
  (d) changing ONE entry of the N-entry map (through the netagent, and through the applier).

Every measured apply is checked against the kernel (rule counts, the changed rule). Human-readable
lines go to stderr; the last line on stdout is one JSON object with every figure (seconds).

    bench/natmap_apply.py --sizes 100,1000,10000 [--per-rule-max 2000] [--repeats 3] [--through auto]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.testkit.hosts import Node  # noqa: E402
from sandbox.testkit.netagent import NetAgent, activate  # noqa: E402
from sandbox.testkit.nodes import NodeFactory  # noqa: E402
from sandbox.testkit.resources import SAMPLE_OWNER  # noqa: E402
from services.common.keys import generate  # noqa: E402
from services.common.tunnelspec import TunnelSpec  # noqa: E402
from services.netagent.config import AgentConfig  # noqa: E402
from services.netagent.kernel.iptables import Iptables  # noqa: E402
from services.netagent.kernel.netns import run_in_netns  # noqa: E402
from services.netagent.plan.natrules import cluster_chains, desired_state, parse_nat_map  # noqa: E402

CLUSTER_ID = "bench-cluster"
LOCAL_EXT = "10.201.0.0/16"
# Our pods and the remote's overlap (10.0.0.0/16 both), as in Liqo's conflict case.
TUNNEL = dict(
    cluster_id=CLUSTER_ID, cluster_name="bench", local_pod_cidr="10.0.0.0/16", local_external_cidr=LOCAL_EXT,
    remote_pod_cidr="10.0.0.0/16", remote_nat_pod_cidr="10.60.0.0/16", remote_external_cidr=LOCAL_EXT,
    remote_nat_external_cidr="10.70.0.0/16", endpoint="192.0.2.10", endpoint_port=5871,
)
CHAIN = "LIQO-BENCH"  # for (b) and (c), in their own netns
LOCK_WAIT = "10"
IN_NODE_TIMEOUT = 3600.0  # a measurement run inside a node (Node.call) may take this long


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def entries(n: int, variant: int = 0) -> dict[str, str]:
    """old (workload) -> new (in the local external CIDR, skipping .0 and the probe address .1).
    Each variant maps every workload to another address: no cache can recognise it."""
    def quad(prefix: str, k: int) -> str:
        return f"{prefix}.{k >> 8}.{k & 255}"

    return {quad("10.0", i + 2): quad("10.201", i + 2 + variant) for i in range(n)}


def one_changed(m: dict[str, str], flip: int) -> tuple[dict[str, str], str, str]:
    """The map with its middle entry pointing at another workload; returns (map, new, old)."""
    keys = list(m)
    old = keys[len(keys) // 2]
    changed = dict(m)
    new_addr = changed.pop(old)
    target = f"192.168.{flip & 255}.{7 + (flip >> 8) % 200}"
    changed[target] = new_addr
    return changed, new_addr, target


def dnat_args(new: str, old: str) -> list[str]:
    return ["-d", f"{new}/32", "-j", "DNAT", "--to-destination", old]


def spec() -> TunnelSpec:
    return TunnelSpec.parse(
        **TUNNEL, public_key=generate().public_key  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def throwaway_netns() -> Iterator[tuple[Node, str]]:
    """A kit node owning one named netns: (node, netns name). What opens /run/netns/NAME (nsenter,
    the applier) runs inside the node (`Node.call`), where that name resolves."""
    with NodeFactory() as nodes:
        yield nodes.netns("bench")


def in_netns(ns: str, *argv: str, stdin: str | None = None) -> str:
    return run_in_netns(ns, argv, input=stdin, timeout=600).stdout


def count_rules(save: str, chain: str) -> int:
    return sum(1 for line in save.splitlines() if line.startswith(f"-A {chain} "))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---- (c) the floor -------------------------------------------------------------------------------


def restore_floor(ns: str, m: dict[str, str], repeats: int) -> float:
    lines = ["*nat", f":{CHAIN} - [0:0]"]
    lines += [f"-A {CHAIN} " + " ".join(dnat_args(new, old)) for old, new in m.items()]
    script = "\n".join([*lines, "COMMIT", ""])
    times = []
    for _ in range(repeats):
        drop = f"*nat\n:{CHAIN} - [0:0]\n-X {CHAIN}\nCOMMIT\n"  # start from no chain at all
        in_netns(ns, "iptables-legacy-restore", "--noflush", stdin=drop)
        t = time.perf_counter()
        in_netns(ns, "iptables-legacy-restore", "--noflush", "-w", LOCK_WAIT, stdin=script)
        times.append(time.perf_counter() - t)
        assert count_rules(in_netns(ns, "iptables-legacy-save", "-t", "nat"), CHAIN) == len(m)
    return median(times)


# ---- (b) the original's method: two processes per rule --------------------------------------------

PER_RULE_LOOP = r"""
import json, subprocess, sys, time
chain, lock, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
rules = json.load(sys.stdin)
subprocess.run(["iptables-legacy", "-w", lock, "-t", "nat", "-N", chain], check=True)
points, t0 = [], time.perf_counter()
for i, rule in enumerate(rules):
    base = ["iptables-legacy", "-w", lock, "-t", "nat"]
    if subprocess.run([*base, "-C", chain, *rule], capture_output=True).returncode != 0:
        subprocess.run([*base, "-A", chain, *rule], check=True)
    if (i + 1) % batch == 0 or i + 1 == len(rules):
        points.append((i + 1, time.perf_counter() - t0))
print(json.dumps(points))
"""


def per_rule(ns: str, m: dict[str, str], cap: int) -> dict[str, Any]:
    """Runs inside the netns (as Liqo's gateway did), so each rule costs exactly its two execs."""
    rules = [dnat_args(new, old) for old, new in list(m.items())[:cap]]
    batch = max(1, min(100, len(rules) // 10))
    loop = [sys.executable, "-c", PER_RULE_LOOP, CHAIN, LOCK_WAIT, str(batch)]
    out = in_netns(ns, *loop, stdin=json.dumps(rules))
    points: list[tuple[int, float]] = [(int(i), float(t)) for i, t in json.loads(out)]
    assert count_rules(in_netns(ns, "iptables-legacy-save", "-t", "nat"), CHAIN) == len(rules)
    measured = points[-1][1]
    n = len(m)
    if len(rules) == n:
        return {"seconds": measured, "rules_run": n, "extrapolated": False}
    # Per-rule cost at table size s is about a + b*s (each exec reads and rewrites the whole table):
    # fit it on the batches, then add the cost of the rules not run.
    xs, ys, prev_i, prev_t = [], [], 0, 0.0
    for i, t in points:
        xs.append((prev_i + i) / 2)
        ys.append((t - prev_t) / (i - prev_i))
        prev_i, prev_t = i, t
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    b = max(b, 0.0)
    a = my - b * mx
    k0 = len(rules)
    rest = (n - k0) * a + b * (n * (n - 1) - k0 * (k0 - 1)) / 2
    return {
        "seconds": measured + rest, "rules_run": k0, "measured_seconds": measured, "extrapolated": True,
        "method": "least-squares fit of per-rule seconds = a + b*table_size over batches, summed to N",
        "a_seconds": a, "b_seconds_per_rule": b,
    }


# ---- (a)/(d) through the applier -----------------------------------------------------------------


def through_applier(m: dict[str, str], repeats: int) -> dict[str, float]:
    with throwaway_netns() as (node, ns):
        result: dict[str, float] = node.call(applier_in_netns, ns, m, repeats, timeout=IN_NODE_TIMEOUT)
        return result


def applier_in_netns(ns: str, m: dict[str, str], repeats: int) -> dict[str, float]:
    cfg = AgentConfig()
    s = spec()
    map_chain = cluster_chains(s.chain_suffix).map
    ipt = Iptables(ns)
    ipt.apply(desired_state([s], {}, cfg))  # the tunnel exists, its map is empty

    def apply(raw: dict[str, str]) -> tuple[float, float]:
        """(validation seconds, desired_state + apply seconds)."""
        t = time.perf_counter()
        parsed = parse_nat_map(s, raw)  # validation: part of the agent's cost, reported apart
        t1 = time.perf_counter()
        ipt.apply(desired_state([s], {s.cluster_id: parsed}, cfg))
        return t1 - t, time.perf_counter() - t1

    full, change = [], []
    for r in range(repeats):
        ipt.apply(desired_state([s], {}, cfg))
        full.append(apply(entries(len(m), variant=r + 1)))  # a map no cache has seen
        assert count_rules(in_netns(ns, "iptables-legacy-save", "-t", "nat"), map_chain) == len(m) + 1
    apply(m)
    for k in range(max(repeats, 5)):
        changed, new_addr, target = one_changed(m, k)
        change.append(apply(changed))
        assert f"-A {map_chain} -d {new_addr}/32 -j DNAT --to-destination {target}" in in_netns(
            ns, "iptables-legacy-save", "-t", "nat"
        )
    return {
        "apply_seconds": median([v + a for v, a in full]),
        "apply_without_validation_seconds": median([a for _, a in full]),
        "validation_seconds": median([v for v, _ in full]),
        "change_one_seconds": median([v + a for v, a in change]),
    }


# ---- (a)/(d) through the netagent over gRPC -------------------------------------------------------


def through_grpc(m: dict[str, str], repeats: int) -> dict[str, float]:
    import grpc

    from services.api.netagent.v1 import netagent_pb2 as pb
    from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc

    work = Path(tempfile.mkdtemp(prefix="lgt-bench-"))
    try:
        with NodeFactory() as nodes:
            node = nodes.make("bench")
            with NetAgent(node, work, args=("--log-level", "warning"), probe_interval=None) as agent:
                activate(agent, generate().private_key, ttl=3600)
                options = [("grpc.max_send_message_length", 64 << 20)]
                channel = grpc.insecure_channel(f"unix:{agent.socket}", options=options)
                try:
                    api = pb_grpc.NetAgentServiceStub(channel)
                    s = spec()
                    tunnel = pb.Tunnel(**TUNNEL, public_key=s.public_key)  # type: ignore[arg-type]
                    api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=tunnel, owner=SAMPLE_OWNER))
                    map_chain = cluster_chains(s.chain_suffix).map

                    def kernel() -> str:
                        return node.exec_in_netns("liqo-netns", ["iptables-legacy-save", "-t", "nat"]).stdout

                    def set_map(raw: dict[str, str]) -> float:
                        req = pb.SetNatMappingsRequest(cluster_id=CLUSTER_ID, mappings=raw)
                        t = time.perf_counter()
                        resp = api.SetNatMappings(req, timeout=120)
                        elapsed = time.perf_counter() - t
                        assert resp.changed and resp.count == len(raw), resp
                        return elapsed

                    full, change = [], []
                    for r in range(repeats):
                        api.DeleteNatMappings(pb.DeleteNatMappingsRequest(cluster_id=CLUSTER_ID))
                        full.append(set_map(entries(len(m), variant=r + 1)))
                        assert count_rules(kernel(), map_chain) == len(m) + 1
                    set_map(m)
                    for k in range(max(repeats, 5)):
                        changed, new_addr, target = one_changed(m, k)
                        change.append(set_map(changed))
                        rule = f"-A {map_chain} -d {new_addr}/32 -j DNAT --to-destination {target}"
                        assert rule in kernel()
                    return {"apply_seconds": median(full), "change_one_seconds": median(change)}
                finally:
                    channel.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- driver --------------------------------------------------------------------------------------


def grpc_available() -> str | None:
    """Why the gRPC path cannot run, or None."""
    if not (ROOT / "services" / "netagent" / "main.py").exists():
        return "services/netagent/main.py missing"
    if shutil.which("wireguard-go") is None and not Path("/sys/module/wireguard").exists():
        return "no WireGuard implementation"
    try:
        import sandbox.testkit.hosts  # noqa: F401
        import services.netagent.main  # noqa: F401
    except ImportError as e:
        return f"netagent not importable: {e}"
    return None


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def measure(n: int, args: argparse.Namespace, through: list[str]) -> dict[str, Any]:
    m = entries(n)
    row: dict[str, Any] = {"n": n}
    with throwaway_netns() as (node, ns):
        row["restore_floor_seconds"] = node.call(restore_floor, ns, m, args.repeats, timeout=IN_NODE_TIMEOUT)
    log(f"N={n}: (c) one iptables-legacy-restore: {row['restore_floor_seconds'] * 1e3:.1f} ms")
    with throwaway_netns() as (node, ns):
        row["per_rule"] = node.call(per_rule, ns, m, args.per_rule_max, timeout=IN_NODE_TIMEOUT)
    pr = row["per_rule"]
    how = ""
    if pr["extrapolated"]:
        how = f" (extrapolated from {pr['rules_run']} rules: {pr['measured_seconds']:.2f} s)"
    log(f"N={n}: (b) per-rule -C/-A execs: {pr['seconds']:.2f} s{how}")
    runners: dict[str, Callable[[dict[str, str], int], dict[str, float]]] = {
        "grpc": through_grpc, "applier": through_applier,
    }
    for way in list(through):
        try:
            r = runners[way](m, args.repeats)
        except Exception as e:  # the gRPC path failed: say so, measure the rest through the applier
            if way != "grpc" or args.through == "grpc":
                raise
            log(f"N={n}: the gRPC netagent failed ({e!r}); continuing through the applier only")
            row["grpc_error"] = repr(e)[:500]
            through.remove("grpc")
            continue
        row[way] = {
            **r,
            "speedup_vs_per_rule": ratio(pr["seconds"], r["apply_seconds"]),
            "ratio_to_restore_floor": ratio(r["apply_seconds"], row["restore_floor_seconds"]),
        }
        if "apply_without_validation_seconds" in r:
            row[way]["ratio_to_restore_floor_without_validation"] = ratio(
                r["apply_without_validation_seconds"], row["restore_floor_seconds"]
            )
        log(f"N={n}: (a) through {way}: {r['apply_seconds'] * 1e3:.1f} ms "
            f"(x{row[way]['ratio_to_restore_floor']} the floor, "
            f"{row[way]['speedup_vs_per_rule']}x faster than per-rule); "
            f"(d) change one entry: {r['change_one_seconds'] * 1e3:.1f} ms"
            + (f"; without validation x{row[way]['ratio_to_restore_floor_without_validation']} the floor"
               if "apply_without_validation_seconds" in r else ""))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,1000,10000", help="comma-separated N")
    p.add_argument("--per-rule-max", type=int, default=2000, help="per-rule execs actually run per N")
    p.add_argument("--repeats", type=int, default=5, help="repeats per measurement (median reported)")
    p.add_argument("--through", choices=["auto", "grpc", "applier"], default="auto",
                   help="auto: the gRPC netagent when it can run (and the applier alone in any case)")
    args = p.parse_args()
    if os.geteuid() != 0:
        log("needs root (network namespaces, iptables)")
        return 2
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if any(not 1 <= n <= 65000 for n in sizes):
        log("sizes must be in 1..65000 (one /16 external CIDR)")
        return 2
    why_not = grpc_available() if args.through in ("auto", "grpc") else "not requested"
    if args.through == "grpc" and why_not:
        log(f"gRPC path unavailable: {why_not}")
        return 2
    through = (["grpc"] if why_not is None else []) + (["applier"] if args.through != "grpc" else [])
    rows = [measure(n, args, through) for n in sizes]
    errors = [r["grpc_error"] for r in rows if "grpc_error" in r]
    version = subprocess.run(["iptables-legacy", "--version"], capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": "natmap_apply",
        "through": through[0],  # the path of the headline figures: "grpc" (the netagent) or "applier"
        "through_all": through,
        "grpc_unavailable_reason": why_not or (errors[0] if errors else None),
        "iptables": version,
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "repeats": args.repeats,
        "per_rule_max": args.per_rule_max,
        "results": rows,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
