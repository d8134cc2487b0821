"""``liqo-kubeapi``: run the in-memory Kubernetes API server standalone (a test double).

Prints the server's URL, then ``ready`` once everything (the control socket too) is set up. With
``--control SOCKET`` it also listens on a Unix socket taking one ``pause SECONDS`` line per
connection (answered ``ok`` or ``error: ...``): an API server outage staged on the server's own
address, for a server running where the caller cannot reach its hooks (another network namespace).
A ``requests SINCE`` line is answered with the request log from POSIX time SINCE on, as one JSON
list of ``[time, verb, resource, subresource, namespace, name, code]`` (what a benchmark counts the
API writes of a running system with).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socketserver
import sys
import threading
from types import FrameType

from sandbox.kubeapi.errors import APIError
from sandbox.kubeapi.hooks import RequestRecord
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
    p.add_argument(
        "--control",
        metavar="SOCKET",
        help="listen on this Unix socket for 'pause SECONDS' lines (an outage: connections cut and "
        "refused for SECONDS, then the same server listens again)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return p.parse_args(argv)


def requests_since(log: list[RequestRecord], since: float) -> str:
    """The request log from POSIX time `since` on, as one JSON line."""
    return json.dumps([[r.time, r.verb, r.resource, r.subresource, r.namespace, r.name, r.code]
                       for r in log if r.time >= since])


def _control_server(path: str, api: KubeAPIServer) -> socketserver.ThreadingUnixStreamServer:
    class Control(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            words = self.rfile.readline().decode().split()
            try:
                if len(words) == 2 and words[0] == "pause":
                    api.hooks.pause(float(words[1]))
                    logging.info("paused for %s s", words[1])
                    self.wfile.write(b"ok\n")
                elif len(words) == 2 and words[0] == "requests":
                    self.wfile.write(requests_since(api.hooks.request_log, float(words[1])).encode() + b"\n")
                else:
                    self.wfile.write(b"error: expected 'pause SECONDS' or 'requests SINCE'\n")
            except Exception as e:  # the answer is the caller's error report
                self.wfile.write(f"error: {e}\n".encode())

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socketserver.ThreadingUnixStreamServer(path, Control)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="kubeapi-control", daemon=True).start()
    return server


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
    control = None
    if args.control:
        try:
            control = _control_server(args.control, api)
        except OSError as exc:
            print(f"liqo-kubeapi: cannot listen on {args.control}: {exc}", file=sys.stderr)
            api.stop()
            return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.kubeconfig:
        api.write_kubeconfig(args.kubeconfig)
    print(api.url, flush=True)
    print("ready", flush=True)
    done.wait()
    if control is not None:
        control.shutdown()
        control.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.control)
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
