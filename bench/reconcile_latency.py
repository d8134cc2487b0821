#!/usr/bin/env python3
"""Reconcile latency of the tunnel controller with REAL netagents, on this machine (root needed).

A hub cluster (emulated node, real liqo-netagent with wireguard-go, in-memory API server, the tunnel
controller in this process) and --live remote clusters with their own agents and controllers. For
each N in --sizes, N TunnelEndpoints are created in the hub at once (8 concurrent clients); --live
of them point at the live remotes (placed in the creation order by --live-at), the others at
addresses nobody answers. Measured per
TunnelEndpoint, from its creation (the API server answered the POST):

  programmed  its WireGuard peer and both routes are in the hub's kernel (`wg show`, `ip route`,
              polled every ~50 ms, so figures carry up to ~0.1 s of sampling delay);
  connected   its status says Connected (live remotes only; API polled every ~50 ms).

Then all N are deleted (and the hub's agent checked empty) before the next size. Human-readable
lines go to stderr, the last one the time to Connected over every live TunnelEndpoint of the run;
the last line on stdout is one JSON object with every figure (seconds), `time_to_connected` that
summary.

With --mutual the remotes' TunnelEndpoints for the hub are created in the same burst as the hub's
(a peering creates both sides at once), so a first handshake may reach a remote that does not know
the hub yet; every agent runs with the product's --probe-interval (2 s) unless told otherwise.
The time to Connected over 20 TunnelEndpoints (README.md, Numbers) is

    bench/reconcile_latency.py --sizes 20 --live 20 --mutual --stagger 1   # one apply after another
    bench/reconcile_latency.py --sizes 20 --live 20 --mutual               # all 40 at once
    bench/reconcile_latency.py --sizes 20 --live 20 --mutual --stagger 1 --remote-delay 1  # remote 1 s later

    bench/reconcile_latency.py [--sizes 1,10,100] [--live 2] [--workers 8] [--live-at spread] [--mutual]
                               [--probe-interval 2] [--stagger 0] [--remote-delay 0] [--timeout 90]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.testkit.fanout import Fanout, FanoutRun, percentile  # noqa: E402
from sandbox.testkit.lab import Lab, why_unavailable  # noqa: E402


def summary(values: list[float]) -> dict[str, float | int]:
    return {
        "count": len(values),
        "p50": round(percentile(values, 50), 4),
        "p95": round(percentile(values, 95), 4),
        "max": round(values[-1], 4) if values else float("nan"),
    }


def measure(fanout: Fanout, n: int, timeout: float, live_at: str, stagger: float,
            remote_delay: float) -> dict[str, Any]:
    run: FanoutRun = fanout.burst(n, timeout=timeout, live_at=live_at, stagger=stagger,
                                  remote_delay=remote_delay)
    result = {
        "n": n,
        "live": len(run.live),
        "programmed": summary(run.latencies("programmed")),
        "connected": summary(run.latencies("connected")),
        "all_programmed_after": round(run.all_programmed_after(), 4),
        "live_connected_after": round(run.live_connected_after(), 4),
        "_connected": run.latencies("connected"),  # pooled over sizes by main(), then dropped
    }
    t0 = time.monotonic()
    fanout.clear(timeout=timeout)
    result["all_deleted_after"] = round(time.monotonic() - t0, 4)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,10,100", help="comma-separated TunnelEndpoint counts")
    p.add_argument("--live", type=int, default=2, help="live remote clusters (each a node with an agent)")
    p.add_argument("--workers", type=int, default=8, help="tunnel controller workers on the hub")
    p.add_argument("--live-at", choices=("first", "spread", "last"), default="spread",
                   help="where the live TunnelEndpoints are in the creation order (the controller's "
                   "queue serves them in that order)")
    p.add_argument("--mutual", action="store_true",
                   help="create the live remotes' TunnelEndpoints for the hub in each burst too")
    p.add_argument("--probe-interval", type=float, default=2.0,
                   help="every agent's --probe-interval in seconds (the product's default: 2)")
    p.add_argument("--stagger", type=float, default=0.0,
                   help="seconds between creations (0: all at once, from 8 clients)")
    p.add_argument("--remote-delay", type=float, default=0.0,
                   help="with --mutual: seconds between the hub's TunnelEndpoint and the remote's; a live "
                   "one's times then count from the remote's (when the peering is complete)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds allowed per size (and per clean-up)")
    args = p.parse_args()
    if why := why_unavailable():
        print(f"reconcile_latency: {why}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or max(sizes) > 250 or args.live < 1:
        print("reconcile_latency: sizes must be in 1..250 and --live at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lgt-reconcile-") as tmp, Lab(Path(tmp)) as lab:
        fanout = Fanout(lab, live=args.live, workers=args.workers, mutual=args.mutual,
                        probe_interval=args.probe_interval)
        setup = time.monotonic() - started
        print(f"setup: hub + {args.live} live remotes in {setup:.1f}s", file=sys.stderr)
        for n in sizes:
            r = measure(fanout, n, args.timeout, args.live_at, args.stagger, args.remote_delay)
            results.append(r)
            pr, co = r["programmed"], r["connected"]
            print(f"N={n:4d}  created->programmed p50 {pr['p50']:.3f}s p95 {pr['p95']:.3f}s "
                  f"max {pr['max']:.3f}s | created->Connected ({co['count']} live) p50 {co['p50']:.3f}s "
                  f"p95 {co['p95']:.3f}s max {co['max']:.3f}s | all programmed after "
                  f"{r['all_programmed_after']:.3f}s, deleted in {r['all_deleted_after']:.3f}s",
                  file=sys.stderr)
    connected = summary(sorted(v for r in results for v in r.pop("_connected")))
    print(f"time to Connected over {connected['count']} live TunnelEndpoints: p50 {connected['p50']:.3f}s "
          f"p95 {connected['p95']:.3f}s max {connected['max']:.3f}s", file=sys.stderr)
    print(json.dumps({"benchmark": "reconcile_latency", "cpus": os.cpu_count(), "live": args.live,
                      "workers": args.workers, "live_at": args.live_at, "mutual": args.mutual,
                      "probe_interval": args.probe_interval, "stagger": args.stagger,
                      "remote_delay": args.remote_delay,
                      "setup_seconds": round(setup, 2),
                      "time_to_connected": connected, "results": results,
                      "total_seconds": round(time.monotonic() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
