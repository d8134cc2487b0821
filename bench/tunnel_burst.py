#!/usr/bin/env python3
"""The netagent's own tunnel throughput: --tunnels tunnels (default: the --max-tunnels default, 256)
installed through EnsureTunnel on the tunnel socket, then deleted, by --workers concurrent clients
(one run per comma-separated count), with no controller in between (root needed).

One real netagent with wireguard-go on the security proof's node (`sandbox/testkit/uplink.py`),
holding the legitimate tenant's tunnel plus --tunnels - 1 more, each with its own /24s and owner.
Concurrent calls are committed in batches (group commit: one routes update, iptables restore, peers
write and state write per batch), so with several clients the time per tunnel falls; one client
(one call after another) measures a commit per tunnel. Human lines go to stderr; the last line on
stdout is JSON (seconds).

    bench/tunnel_burst.py [--tunnels 256] [--workers 1,8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.testkit.nodes import NodeFactory  # noqa: E402
from sandbox.testkit.uplink import start_secure, tunnel  # noqa: E402
from services.api.netagent.v1 import netagent_pb2 as pb  # noqa: E402
from services.netagent.config import AgentConfig  # noqa: E402

DEFAULTS = {f.name: f.default for f in fields(AgentConfig)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def request(i: int) -> pb.EnsureTunnelRequest:
    second, third = 128 + i // 128, (i % 128) * 2
    t = tunnel(cluster_id=f"c{i:04d}", cluster_name=f"c{i}", endpoint=str(IPv4Address("172.31.0.2") + i),
               remote_pod_cidr=f"10.{second}.{third}.0/24", remote_nat_pod_cidr="",
               remote_external_cidr=f"10.{second}.{third + 1}.0/24", remote_nat_external_cidr="")
    return pb.EnsureTunnelRequest(tunnel=t, owner=f"liqo-tenant-c{i}/tep")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tunnels", type=int, default=DEFAULTS["max_tunnels"])
    p.add_argument("--workers", default="1,8", help="comma-separated concurrent client counts, one run each")
    args = p.parse_args()
    out: dict[str, float] = {"tunnels": args.tunnels}
    with NodeFactory() as nodes, tempfile.TemporaryDirectory(prefix="liqo-bench-burst-") as tmp:
        sec = start_secure(nodes, Path(tmp), "burst")
        try:
            stub = sec.stub("tunnel")
            ids = range(1, args.tunnels)
            for workers in (int(w) for w in args.workers.split(",")):
                started = time.monotonic()
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda i: stub.EnsureTunnel(request(i), timeout=120), ids))
                out[f"install_seconds_{workers}"] = time.monotonic() - started
                if len(sec.listed()) != args.tunnels:
                    raise RuntimeError(f"{len(sec.listed())} tunnels listed, not {args.tunnels}")
                started = time.monotonic()
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda i: stub.DeleteTunnel(pb.DeleteTunnelRequest(
                        cluster_id=f"c{i:04d}", owner=f"liqo-tenant-c{i}/tep"), timeout=120), ids))
                out[f"delete_seconds_{workers}"] = time.monotonic() - started
                if len(sec.listed()) != 1:
                    raise RuntimeError(f"{len(sec.listed())} tunnels left, not 1")
                installed, deleted = out[f"install_seconds_{workers}"], out[f"delete_seconds_{workers}"]
                log(f"{workers} client(s): {args.tunnels} tunnels installed in {installed:.2f} s, "
                    f"deleted in {deleted:.2f} s")
        finally:
            sec.close()
    print(json.dumps({"benchmark": "tunnel_burst", **{k: round(v, 3) for k, v in out.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
