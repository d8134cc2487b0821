#!/usr/bin/env python3
"""Kernel WireGuard against wireguard-go, in one QEMU guest on Debian's kernel (root needed).

Boots the kernel guest (sandbox/testkit/kernelguest.py) and runs itself inside with `--inside`. For
each implementation in turn (`--wireguard-implementation kernel`, then `userspace`): two emulated
nodes with the same pod CIDR, real netagents, the pods reaching each other through remapped
addresses. Measured:

  connected  EnsureTunnel on both agents -> A's ListTunnels says Connected (polled every 20 ms),
             --rounds times (each round deletes both tunnels first, so each needs a new handshake);
  restart    pings every 20 ms from A's pod while A's agent is SIGKILLed and restarted: replies
             missing between the first and the last one;
  tcp        iperf3 TCP from A's pod to B's remapped address, --seconds long (bits per second).

The guest is emulated (TCG, no KVM here): absolute figures are meaningless, the kernel/userspace
ratios in the same guest are what counts. Human-readable lines go to stderr; the last line on
stdout is one JSON object.

    bench/kernel_path.py [--rounds 5] [--seconds 5] [--cpus 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.testkit.fanout import percentile  # noqa: E402
from sandbox.testkit.hosts import link_nodes  # noqa: E402
from sandbox.testkit.kernelguest import BOOT_DIR, KernelGuest, python_script  # noqa: E402
from sandbox.testkit.netagent import NetAgent, activate  # noqa: E402
from sandbox.testkit.nodes import NodeFactory  # noqa: E402
from sandbox.testkit.resources import SAMPLE_OWNER, overlapping_tunnel  # noqa: E402
from sandbox.testkit.traffic import Pinger, ping_ok  # noqa: E402
from sandbox.testkit.wait import wait_for  # noqa: E402
from services.api.netagent.v1 import netagent_pb2 as pb  # noqa: E402
from services.common.keys import generate  # noqa: E402

ID_A, ID_B = "aaaaaaaa-1111-4111-8111-0000000000a1", "bbbbbbbb-2222-4222-8222-0000000000b2"
UNDERLAY = {"a": "192.0.2.1", "b": "192.0.2.2"}
A_SEES_B = "10.60.2.7"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(implementation: str, rounds: int, seconds: int, work: Path) -> dict[str, Any]:
    with NodeFactory() as nodes:
        na, nb = nodes.make("a"), nodes.make("b")
        link_nodes(na, UNDERLAY["a"], nb, UNDERLAY["b"])
        pod_a = na.add_pod("web", "10.0.1.5/16", "10.0.255.254")
        pod_b = nb.add_pod("web", "10.0.2.7/16", "10.0.255.254")
        agents, pubs = {}, {}
        try:
            for name, node in (("a", na), ("b", nb)):
                agent = NetAgent(node, work / f"{implementation}-{name}", probe_interval=None,
                                 args=("--wireguard-implementation", implementation))
                agents[name] = agent.start()
                keys = generate()
                activate(agent, keys.private_key)
                pubs[name] = keys.public_key
            a, b = agents["a"].api, agents["b"].api
            to_b = overlapping_tunnel(cluster_id=ID_B, endpoint=UNDERLAY["b"], public_key=pubs["b"],
                                      seen_as=80, sees=60)
            to_a = overlapping_tunnel(cluster_id=ID_A, endpoint=UNDERLAY["a"], public_key=pubs["a"],
                                      seen_as=60, sees=80)

            def connected() -> bool:
                entries = a.ListTunnels(pb.ListTunnelsRequest()).tunnels
                return bool(entries) and entries[0].status.state == pb.TUNNEL_STATE_CONNECTED

            times = []
            for _ in range(rounds):
                a.DeleteTunnel(pb.DeleteTunnelRequest(cluster_id=ID_B, owner=SAMPLE_OWNER))
                b.DeleteTunnel(pb.DeleteTunnelRequest(cluster_id=ID_A, owner=SAMPLE_OWNER))
                t0 = time.monotonic()
                a.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=to_b, owner=SAMPLE_OWNER))
                b.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=to_a, owner=SAMPLE_OWNER))
                wait_for("Connected", connected, 60, interval=0.02)
                times.append(time.monotonic() - t0)
            times.sort()
            wait_for("pods reach each other", lambda: ping_ok(pod_a, A_SEES_B, count=2), 30)

            server = pod_b.popen(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(1)
                out = pod_a.run("iperf3", "-c", A_SEES_B, "-t", str(seconds), "-J",
                                timeout=seconds + 60).stdout
            finally:
                server.kill()
                server.wait()
            tcp = json.loads(out)["end"]["sum_received"]["bits_per_second"]

            with Pinger(pod_a, A_SEES_B, interval=0.02) as ping:
                time.sleep(1)
                agents["a"].stop(signal.SIGKILL)
                agents["a"].start()
                time.sleep(1)
            assert ping.result is not None
            missing, expected = ping.result.missing()
        finally:
            for agent in agents.values():
                agent.close()
    result = {"connected_p50": round(percentile(times, 50), 3), "connected_max": round(times[-1], 3),
              "restart_lost": missing, "restart_pings": expected, "tcp_bps": round(tcp)}
    log(f"{implementation:9s} connected p50 {result['connected_p50']} s (max {result['connected_max']} s), "
        f"SIGKILL restart lost {missing}/{expected} pings, TCP {tcp / 1e6:.0f} Mbit/s")
    return result


def inside(args: argparse.Namespace) -> int:
    release = Path("/proc/sys/kernel/osrelease").read_text().strip()
    log(f"guest kernel {release}, wireguard module: {Path('/sys/module/wireguard').is_dir()}")
    with tempfile.TemporaryDirectory() as work:
        out: dict[str, Any] = {impl: measure(impl, args.rounds, args.seconds, Path(work))
                               for impl in ("kernel", "userspace")}
    k, u = out["kernel"], out["userspace"]
    out["ratios"] = {"tcp_kernel_over_userspace": round(k["tcp_bps"] / u["tcp_bps"], 2),
                     "connected_p50_kernel_over_userspace": round(k["connected_p50"] / u["connected_p50"], 2)}
    out["guest_kernel"] = release
    Path(args.out).write_text(json.dumps(out))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="tunnel (re)creations timed per implementation")
    p.add_argument("--seconds", type=int, default=5, help="length of the iperf3 run")
    p.add_argument("--cpus", type=int, default=2, help="the guest's vCPUs")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inside:
        return inside(args)
    share = BOOT_DIR / "bench"
    result = share / "result.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside", "--out", str(result),
            "--rounds", str(args.rounds), "--seconds", str(args.seconds)]
    script = python_script(argv, {}, output=share / "bench.log")
    run = KernelGuest(cpus=args.cpus).run(script, share, timeout=900)
    with contextlib.suppress(OSError):
        sys.stderr.write((share / "bench.log").read_text(errors="replace"))
    if run.returncode != 0 or not result.exists():
        log(f"kernel_path: the guest run failed ({run.returncode}, {run.seconds:.0f} s):\n"
            f"{run.console[-3000:]}")
        return 1
    data = json.loads(result.read_text())
    data["guest_wall_seconds"] = round(run.seconds, 1)
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
