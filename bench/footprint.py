#!/usr/bin/env python3
"""Memory and CPU of each gateway process (netagent, tunnel, natmap, labeler), on this machine (root).

One emulated cluster (the kit's `EmulatedCluster`: in-memory API server, one gateway replica whose
four processes run with the product's default flags) is measured twice:

  idle         the replica is the leader and holds no tunnel;
  100 tunnels  --tunnels TunnelEndpoints exist (peers that never answer), the tunnel controller has
               reconciled them and the netagent holds that many WireGuard peers.

Each phase waits --settle seconds, then samples every process over --window seconds: CPU % is the
process's user + system time over the window (/proc/PID/stat, 100 % = one core), RSS its VmRSS at
the end (and the largest seen, sampled every second), plus its threads. wireguard-go (its own
process) is reported for reference. Human-readable lines go to stderr; the last line on stdout is
one JSON object with every figure.

    bench/footprint.py [--tunnels 100] [--settle 10] [--window 20] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The controllers start as the venv's console scripts: this checkout's code must win over the one
# the venv was installed from.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

from sandbox.testkit.cluster import PROCESSES, ClusterOptions, EmulatedCluster, GatewayReplica, Wan  # noqa: E402
from sandbox.testkit.cluster.runtime import ProcessRuntime  # noqa: E402
from sandbox.testkit.fanout import HUB_TENANT_NS, hub_tep  # noqa: E402
from sandbox.testkit.lab import why_unavailable  # noqa: E402
from sandbox.testkit.resources import namespace  # noqa: E402
from sandbox.testkit.wait import wait_for  # noqa: E402
from services.common.keys import generate  # noqa: E402
from services.common.kube import KubeError  # noqa: E402
from services.common.vocabulary import NAMESPACES, TUNNEL_ENDPOINTS  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
LAUNCHERS = {"nsenter", "setpriv"}


def program_pid(pid: int) -> int:
    """The program behind a launcher (nsenter or setpriv that forked instead of exec'ing)."""
    for _ in range(4):
        if Path(f"/proc/{pid}/comm").read_text().strip() not in LAUNCHERS:
            return pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if not children:
            return pid
        pid = int(children[0])
    return pid


def cpu_seconds(pid: int) -> float:
    # Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon (kB) and Threads from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "Threads"):
            out[key] = int(value.split()[0])
    return out


def sample(pids: dict[str, int], window: float) -> dict[str, dict[str, float]]:
    """CPU % over `window` and RSS (MB) of each process."""
    t0, c0 = time.monotonic(), {n: cpu_seconds(p) for n, p in pids.items()}
    peak = {n: 0 for n in pids}
    deadline = t0 + window
    while (left := deadline - time.monotonic()) > 0:
        for n, p in pids.items():
            peak[n] = max(peak[n], status(p)["VmRSS"])
        time.sleep(min(1.0, left))
    elapsed = time.monotonic() - t0
    out = {}
    for n, p in pids.items():
        st = status(p)
        out[n] = {"cpu_percent": round(100 * (cpu_seconds(p) - c0[n]) / elapsed, 2),
                  "rss_mb": round(st["VmRSS"] / 1024, 1),
                  "rss_peak_mb": round(max(peak[n], st["VmRSS"]) / 1024, 1),
                  "rss_anon_mb": round(st["RssAnon"] / 1024, 1), "threads": st["Threads"]}
    return out


def replica_pids(replica: GatewayReplica) -> dict[str, int]:
    runtime = replica.runtime
    assert isinstance(runtime, ProcessRuntime)
    pids = {}
    for name in PROCESSES:
        pid = runtime.pid(name)
        assert pid is not None, f"{name} is not running"
        pids[name] = program_pid(pid)
    assert replica.node is not None
    wg = replica.node.pids("wireguard-go")
    if wg:
        pids["wireguard-go"] = wg[0]
    return pids


def report(phase: str, figures: dict[str, dict[str, float]]) -> None:
    for name, f in figures.items():
        print(f"{phase:12s} {name:12s} RSS {f['rss_mb']:6.1f} MB (peak {f['rss_peak_mb']:.1f}, anon "
              f"{f['rss_anon_mb']:.1f})  CPU {f['cpu_percent']:5.2f} %  threads {f['threads']:.0f}",
              file=sys.stderr)
    gateway = [figures[n] for n in PROCESSES]
    print(f"{phase:12s} {'4 processes':12s} RSS {sum(f['rss_mb'] for f in gateway):6.1f} MB  "
          f"CPU {sum(f['cpu_percent'] for f in gateway):5.2f} %", file=sys.stderr)


def one_run(tunnels: int, settle: float, window: float) -> dict[str, Any]:
    # The product's defaults (the kit's cluster speeds probes up for tests).
    options = ClusterOptions(netagent_args=[], tunnel_args=[])
    with tempfile.TemporaryDirectory(prefix="lgw-footprint-") as tmp, Wan() as wan, \
            EmulatedCluster("fp", 1, wan, replicas=1, options=options, workdir=Path(tmp)) as cluster:
        cluster.start()
        replica = cluster.replicas[0]
        wait_for("the replica to lead", replica.is_active, 60, 0.1)
        cluster.public_key()
        pids = replica_pids(replica)
        time.sleep(settle)  # start-up work (imports, first lists) is not idle
        idle = sample(pids, window)
        report("idle", idle)

        cluster.client.create(NAMESPACES, namespace(HUB_TENANT_NS))
        for i in range(tunnels):
            body = hub_tep(i, f"203.0.113.{1 + i % 250}", generate().public_key)
            cluster.client.create(TUNNEL_ENDPOINTS, body, HUB_TENANT_NS)
        wait_for(f"{tunnels} WireGuard peers", lambda: len(replica.uapi_peers() or []) >= tunnels, 120, 0.5)

        def reconciled() -> bool:
            items = cluster.client.list(TUNNEL_ENDPOINTS, HUB_TENANT_NS)["items"]
            return sum(1 for t in items if (t.get("status") or {}).get("connection")) >= tunnels
        wait_for(f"{tunnels} statuses written", reconciled, 120, 0.5, retry_on=(KubeError,))
        time.sleep(settle)
        loaded = sample(replica_pids(replica), window)
        report(f"{tunnels} tunnels", loaded)
        return {"idle": idle, "tunnels": loaded}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tunnels", type=int, default=100, help="TunnelEndpoints of the second phase")
    p.add_argument("--settle", type=float, default=10.0, help="seconds before each sampling window")
    p.add_argument("--window", type=float, default=20.0, help="seconds of each sampling window")
    p.add_argument("--runs", type=int, default=1, help="independent runs (a fresh cluster each)")
    args = p.parse_args()
    if why := why_unavailable():
        print(f"footprint: {why}", file=sys.stderr)
        return 2
    if not 1 <= args.tunnels <= 250:
        print("footprint: --tunnels must be in 1..250", file=sys.stderr)
        return 2
    started = time.monotonic()
    runs = [one_run(args.tunnels, args.settle, args.window) for _ in range(args.runs)]
    print(json.dumps({"benchmark": "footprint", "cpus": os.cpu_count(), "tunnels": args.tunnels,
                      "settle_seconds": args.settle, "window_seconds": args.window, "runs": runs,
                      "total_seconds": round(time.monotonic() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
