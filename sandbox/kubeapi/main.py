"""``liqo-kubeapi``: run the in-memory Kubernetes API server standalone (a test double)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from sandbox.kubeapi.errors import APIError
from sandbox.kubeapi.server import KubeAPIServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="liqo-kubeapi", description="In-memory Kubernetes API server (test double)."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    p.add_argument(
        "--crds",
        action="append",
        default=[],
        metavar="DIR",
        help="load CRDs (and any other manifests) from this file or directory; repeatable",
    )
    p.add_argument("--kubeconfig", metavar="PATH", help="write a kubeconfig for this server to PATH")
    p.add_argument(
        "--bookmark-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="interval between watch BOOKMARK events (default 10)",
    )
    p.add_argument(
        "--event-log-size",
        type=int,
        default=10_000,
        metavar="N",
        help="events kept for watch resumption; older resourceVersions get 410 Gone",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        api = KubeAPIServer(
            args.host,
            args.port,
            crd_dirs=args.crds,
            event_log_size=args.event_log_size,
            bookmark_interval=args.bookmark_interval,
        )
    except (OSError, APIError, ValueError) as exc:
        print(f"liqo-kubeapi: cannot load manifests: {exc}", file=sys.stderr)
        return 2
    try:
        api.start()
    except OSError as exc:
        print(f"liqo-kubeapi: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.kubeconfig:
        api.write_kubeconfig(args.kubeconfig)
    print(api.url, flush=True)
    done.wait()
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
