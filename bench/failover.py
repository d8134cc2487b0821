#!/usr/bin/env python3
"""Crash failover of an HA gateway with each election profile, on this machine (root needed).

The test kit's emulated clusters, as the HA end-to-end tests build them: cluster A with two gateway
replicas, B with one, peered, a pod in each pinging the other every 50 ms. For each profile
(services/common/leaderelection.py PROFILES: `default`, Liqo's 7 s lease, and `fast`, a 2 s one),
--runs times: the node of A's active replica crashes (every process SIGKILLed at once, the labeler
and the netagent with them, then the node gone: a node loss), and we measure from the kill

  active   the standby's netagent logs its ACTIVE role;
  vip      the Service VIP (played by the kit, as the pod label selects it) points to the standby;
  traffic  the first ping reply after the longest gap of replies that follows the kill.

The crashed node then reboots and rejoins as a standby before the next run. Between runs, over
--window seconds of steady state, A's API server request log gives the election's cost: Lease
writes/s (the leader's renewals), Lease reads/s (every replica's attempts) and all writes/s.
`expected` is what the profile predicts: 1 / retry period writes/s, replicas / retry period reads/s.

Human-readable lines go to stderr; the last line on stdout is one JSON object with every figure.

    bench/failover.py [--runs 5] [--profiles default,fast] [--window 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.testkit.cluster import (  # noqa: E402
    ClusterOptions,
    EmulatedCluster,
    GatewayReplica,
    PeerSampler,
    Wan,
    peer,
)
from sandbox.testkit.cluster.standard import A_SEES_B, B_SEES_A, POD_A, POD_B, POD_B_FROM_A  # noqa: E402
from sandbox.testkit.fanout import percentile  # noqa: E402
from sandbox.testkit.hosts import Pod  # noqa: E402
from sandbox.testkit.traffic import Pinger, ping_ok  # noqa: E402
from sandbox.testkit.wait import wait_for  # noqa: E402
from services.api.netagent.v1 import netagent_pb2 as pb  # noqa: E402
from services.common.leaderelection import PROFILES, Profile  # noqa: E402

REPLICAS = 2


def summary(values: list[float]) -> dict[str, Any]:
    s = sorted(values)
    return {"runs": [round(v, 3) for v in values], "p50": round(percentile(s, 50), 3),
            "p95": round(percentile(s, 95), 3), "max": round(s[-1], 3) if s else None}


def standby_settled(a: EmulatedCluster, r: GatewayReplica) -> bool:
    """`r`'s labeler has read the Lease held by the leader: its netagent is STANDBY at the Lease's
    epoch (a labeler sends that only once it saw the holder)."""
    try:
        info = r.role()
        epoch = int(a.lease()["spec"].get("leaseTransitions", 0))
    except Exception:
        return False
    return bool(info.role == pb.ROLE_STANDBY and int(info.epoch) == epoch)


def api_cost(a: EmulatedCluster, t0: float, t1: float) -> dict[str, float]:
    """Requests per second to A's API server in [t0, t1)."""
    reqs = [r for r in a.api_requests(t0) if r.time < t1]
    span = t1 - t0
    lease = Counter(r.verb for r in reqs if r.resource == "leases")
    writes = Counter(r.resource for r in reqs if r.write)
    return {
        "lease_writes_per_s": round((lease["update"] + lease["create"]) / span, 3),
        "lease_reads_per_s": round(lease["get"] / span, 3),
        "writes_per_s": round(sum(writes.values()) / span, 3),
        "other_writes_per_s": round((sum(writes.values()) - writes["leases"]) / span, 3),
    }


def one_crash(a: EmulatedCluster, pod_a: Pod) -> tuple[float, float, float, int]:
    """Crashes A's active replica's node: (seconds to the standby's ACTIVE, to the VIP following it,
    to traffic; peer samples in which both replicas had peers), then reboots the node as a standby."""
    old = a.leader()
    new = next(r for r in a.replicas if r is not old)
    with PeerSampler(a) as sampler, Pinger(pod_a, POD_B_FROM_A) as pinger:
        wait_for("replies before the crash", lambda: ping_ok(pod_a, POD_B_FROM_A, count=1), 10, 0.1)
        t_kill = time.time()
        old.crash()
        # Polled at 0.1 s: this process also plays the Service and liqo-route (the VIP follower).
        t_active = wait_for("the standby ACTIVE", lambda: new.turned_active_after(t_kill), 60, 0.1)
        wait_for("traffic again", lambda: ping_ok(pod_a, POD_B_FROM_A, count=1, wait=0.5), 60, 0.1)
        time.sleep(0.5)  # a few replies after the gap, so that its end is in the record
    res = pinger.result
    assert res is not None
    gap = res.longest_gap_after(t_kill)
    old.boot()
    old.start()
    wait_for("the rebooted replica standby", lambda: standby_settled(a, old), 60, 0.1)
    assert t_active is not None and a.vip is not None  # wait_for returns a truthy value
    moved = next((t for t, ip in a.vip.history if t > t_kill and ip == new.ip), float("nan"))
    return t_active - t_kill, moved - t_kill, gap[1] - t_kill, len(sampler.overlaps())


def run_profile(name: str, profile: Profile, runs: int, window: float, tmp: Path) -> dict[str, Any]:
    opts = ClusterOptions(election=profile)
    with Wan() as wan, \
         EmulatedCluster("a", 1, wan, replicas=REPLICAS, options=opts, workdir=tmp / f"{name}-a") as a, \
         EmulatedCluster("b", 2, wan, replicas=1, options=opts, workdir=tmp / f"{name}-b") as b:  # fmt: skip
        a.start()
        b.start()
        pod_a = a.add_pod("web", POD_A)
        b.add_pod("web", POD_B)
        for c in (a, b):
            wait_for(f"{c.name}: a leader", lambda: any(r.is_active() for r in c.replicas), 60, 0.1)  # noqa: B023
        a.public_key()
        b.public_key()
        teps = peer(a, b, a_sees_b=A_SEES_B, b_sees_a=B_SEES_A)
        a.wait_connected(teps.in_a, 60)
        b.wait_connected(teps.in_b, 60)
        wait_for("A pod -> B pod", lambda: ping_ok(pod_a, POD_B_FROM_A, count=1), 30, 0.1)
        standby = next(r for r in a.replicas if r is not a.leader())
        wait_for("the standby settled", lambda: standby_settled(a, standby), 30, 0.1)
        active: list[float] = []
        vip: list[float] = []
        traffic: list[float] = []
        costs: list[dict[str, float]] = []
        overlaps = 0
        for i in range(runs):
            t0 = time.time()
            time.sleep(window)
            costs.append(api_cost(a, t0, time.time()))
            t_active, t_vip, t_traffic, both = one_crash(a, pod_a)
            overlaps += both
            vip.append(t_vip)
            active.append(t_active)
            traffic.append(t_traffic)
            print(f"{name} run {i + 1}/{runs}: standby ACTIVE after {t_active:.2f}s, VIP moved after "
                  f"{t_vip:.2f}s, traffic after "
                  f"{t_traffic:.2f}s, samples with two live dataplanes {both}; steady state {costs[-1]}",
                  file=sys.stderr)
    t = profile.timings
    cost = {k: round(sum(c[k] for c in costs) / len(costs), 3) for k in costs[0]}
    return {
        "timings": {"lease_duration": t.lease_duration, "renew_deadline": t.renew_deadline,
                    "retry_period": t.retry_period, "request_timeout": profile.request_timeout,
                    "outage_grace": t.outage_grace},
        "active_s": summary(active),
        "vip_moved_s": summary(vip),
        "traffic_s": summary(traffic),
        "overlap_samples": overlaps,
        "api": cost,
        "expected": {"lease_writes_per_s": round(1 / t.retry_period, 3),
                     "lease_reads_per_s": round(REPLICAS / t.retry_period, 3)},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="crashes per profile")
    p.add_argument("--profiles", default="default,fast", help=f"comma-separated, of {sorted(PROFILES)}")
    p.add_argument("--window", type=float, default=8.0, help="seconds of steady state measured before each "
                   "crash for the API cost")
    args = p.parse_args()
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    if os.geteuid() != 0 or not shutil.which("wireguard-go"):
        print("failover: needs root and wireguard-go", file=sys.stderr)
        return 2
    if args.runs < 1 or args.window <= 0 or not names or any(n not in PROFILES for n in names):
        print(f"failover: --runs >= 1, --window > 0, profiles of {sorted(PROFILES)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory(prefix="lgw-failover-") as tmp:
        for name in names:
            results[name] = run_profile(name, PROFILES[name], args.runs, args.window, Path(tmp))
            r = results[name]
            print(f"{name}: standby ACTIVE p50 {r['active_s']['p50']}s p95 {r['active_s']['p95']}s, "
                  f"VIP moved p50 {r['vip_moved_s']['p50']}s, traffic "
                  f"p50 {r['traffic_s']['p50']}s p95 {r['traffic_s']['p95']}s; Lease writes/s "
                  f"{r['api']['lease_writes_per_s']} (expected {r['expected']['lease_writes_per_s']}), "
                  f"all writes/s {r['api']['writes_per_s']}", file=sys.stderr)
    print(json.dumps({"runs": args.runs, "profiles": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
