"""Benchmark liqo-kubeapi: requests/s for get, list, patch and watch fan-out at 1 000 objects, 50 watchers.

The server runs as its own process (``liqo-kubeapi``), as in the sandbox; clients are urllib3 threads
with keep-alive connections. The last line printed is one JSON object with every number.

    .venv/bin/python bench/kubeapi_rps.py [--objects 1000] [--watchers 50] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

NS_PATH = "/api/v1/namespaces/default/configmaps"


def start_server() -> tuple[subprocess.Popen[str], str]:
    exe = Path(sys.executable).parent / "liqo-kubeapi"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "sandbox.kubeapi.main"]
    proc = subprocess.Popen([*argv, "--port", "0"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"liqo-kubeapi did not start: {url!r}")
    return proc, url


def rate(work: Callable[[urllib3.PoolManager, random.Random], None], seconds: float, threads: int) -> float:
    """Requests/s for ``work`` run in a loop by ``threads`` clients for ``seconds``."""
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        pool = urllib3.PoolManager(maxsize=1)
        rnd = random.Random(i)
        while time.monotonic() < stop:
            work(pool, rnd)
            counts[i] += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def check(resp: urllib3.BaseHTTPResponse, code: int = 200) -> None:
    if resp.status != code:
        raise RuntimeError(f"unexpected {resp.status}: {resp.data[:200]!r}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--watchers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each request-rate phase")
    ap.add_argument("--threads", type=int, default=4, help="concurrent request clients")
    ap.add_argument("--events", type=int, default=300, help="patches fanned out to the watchers")
    args = ap.parse_args()
    proc, url = start_server()
    results: dict[str, Any] = {"objects": args.objects, "watchers": args.watchers, "threads": args.threads}
    try:
        pool = urllib3.PoolManager(maxsize=args.threads)
        hdr = {"Content-Type": "application/json"}
        t0 = time.monotonic()
        for i in range(args.objects):
            meta = {"name": f"cm-{i}", "labels": {"i": str(i % 10)}}
            body = json.dumps({"metadata": meta, "data": {"v": "0"}})
            check(pool.request("POST", url + NS_PATH, body=body, headers=hdr), 201)
        results["create_rps"] = round(args.objects / (time.monotonic() - t0), 1)
        print(f"create: {results['create_rps']} req/s ({args.objects} objects)", flush=True)

        def get(p: urllib3.PoolManager, r: random.Random) -> None:
            check(p.request("GET", f"{url}{NS_PATH}/cm-{r.randrange(args.objects)}"))

        def list_all(p: urllib3.PoolManager, r: random.Random) -> None:
            check(p.request("GET", url + NS_PATH))

        def list_selected(p: urllib3.PoolManager, r: random.Random) -> None:
            check(p.request("GET", f"{url}{NS_PATH}?labelSelector=i%3D{r.randrange(10)}"))

        def patch(p: urllib3.PoolManager, r: random.Random) -> None:
            body = json.dumps({"data": {"v": str(r.random())}})
            check(p.request("PATCH", f"{url}{NS_PATH}/cm-{r.randrange(args.objects)}", body=body,
                            headers={"Content-Type": "application/merge-patch+json"}))

        results["get_rps"] = round(rate(get, args.seconds, args.threads), 1)
        print(f"get: {results['get_rps']} req/s", flush=True)
        results["list_rps"] = round(rate(list_all, args.seconds, args.threads), 1)
        print(f"list (all {args.objects}): {results['list_rps']} req/s", flush=True)
        results["list_selector_rps"] = round(rate(list_selected, args.seconds, args.threads), 1)
        print(f"list (labelSelector, 1/10 match): {results['list_selector_rps']} req/s", flush=True)
        results["patch_rps"] = round(rate(patch, args.seconds, args.threads), 1)
        print(f"patch: {results['patch_rps']} req/s", flush=True)

        # Watch fan-out: every watcher must receive every patch.
        rv = json.loads(pool.request("GET", url + NS_PATH + "?limit=1").data)["metadata"]["resourceVersion"]
        received = [0] * args.watchers
        all_done = threading.Event()
        ready = threading.Barrier(args.watchers + 1)
        finish: list[float] = []
        lock = threading.Lock()

        def watch(i: int) -> None:
            p = urllib3.PoolManager(maxsize=1)
            resp = p.request("GET", f"{url}{NS_PATH}?watch=1&resourceVersion={rv}&timeoutSeconds=60",
                             preload_content=False, timeout=urllib3.Timeout(connect=5, read=60))
            ready.wait(timeout=30)
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                lines = buf.split(b"\n")
                buf = lines.pop()
                received[i] += len([ln for ln in lines if ln])
                if received[i] >= args.events:
                    with lock:
                        finish.append(time.monotonic())
                        if len(finish) == args.watchers:
                            all_done.set()
                    break
            resp.release_conn()

        ws = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(args.watchers)]
        for t in ws:
            t.start()
        ready.wait(timeout=30)
        time.sleep(0.5)  # every watch registered server-side
        results["get_rps_with_watchers"] = round(rate(get, args.seconds, args.threads), 1)
        print(f"get with {args.watchers} idle watchers: {results['get_rps_with_watchers']} req/s", flush=True)
        t0 = time.monotonic()
        for i in range(args.events):
            body = json.dumps({"data": {"v": f"fan-{i}"}})
            check(pool.request("PATCH", f"{url}{NS_PATH}/cm-{i % args.objects}", body=body,
                               headers={"Content-Type": "application/merge-patch+json"}))
        writes_done = time.monotonic()
        if not all_done.wait(timeout=30):
            raise RuntimeError(f"watchers incomplete: {sorted(received)[:5]}... of {args.events}")
        elapsed = max(finish) - t0
        results["fanout_patch_rps"] = round(args.events / (writes_done - t0), 1)
        results["fanout_events_per_s"] = round(args.events * args.watchers / elapsed, 1)
        results["fanout_seconds"] = round(elapsed, 3)
        print(f"watch fan-out: {args.events} patches x {args.watchers} watchers delivered in {elapsed:.2f} s "
              f"= {results['fanout_events_per_s']} events/s (patches during fan-out: "
              f"{results['fanout_patch_rps']} req/s)", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
