"""Controllers (informers feeding a work queue drained by workers) and the Manager that runs them.

A controller knows nothing of its resource beyond a key: the reconcile function gets "ns/name" (or
"name") and reads the object from the informer cache. It returns None when done, or a delay in
seconds to be called again (periodic work such as status refresh); an exception means failure and
the key is retried with per-key capped exponential backoff. A key is never reconciled by two
workers at once.

A controller can be paused (e.g. while this replica is not the active gateway): workers stop taking
keys at once, keys keep accumulating, and resuming re-enqueues every cached object (a full resync).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from services.common.httpendpoint import HttpEndpoint, health_routes
from services.common.kube.backoff import Backoff
from services.common.kube.client import JSON, KubeClient, object_key
from services.common.kube.events import EventRecorder
from services.common.kube.informer import Informer
from services.common.kube.metrics import ControllerMetrics, health_endpoint, metrics_endpoint
from services.common.kube.workqueue import ShutDown, WorkQueue
from services.common.prometheus import metrics_route
from services.common.vocabulary import ResourceRef

log = logging.getLogger(__name__)

Reconcile = Callable[[str], float | None]
KeyMapper = Callable[[JSON], list[str]]


class Controller:
    def __init__(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        metrics: ControllerMetrics,
        workers: int = 4,
        resync_period: float = 300.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self.reconcile = reconcile
        self.metrics = metrics
        self.workers = workers
        self.resync_period = resync_period
        self.queue = WorkQueue(backoff or Backoff(base=0.2, cap=60.0))
        self.primary: Informer | None = None
        self._running = threading.Event()  # set = not paused
        self._running.set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._busy_lock = threading.Lock()

    # --- wiring ----------------------------------------------------------------------------------

    def watch(self, informer: Informer, mapper: KeyMapper | None = None, *, primary: bool = True) -> None:
        """Enqueue keys for every change of `informer`'s objects (the object's own key unless
        `mapper` says otherwise). The first primary informer is what resyncs enumerate."""
        to_keys: KeyMapper = mapper or (lambda o: [object_key(o)])

        def handler(_etype: str, obj: JSON, _old: JSON | None) -> None:
            for k in to_keys(obj):
                self.queue.add(k)

        informer.add_handler(handler)
        if primary and self.primary is None:
            self.primary = informer

    def enqueue(self, key: str, after: float = 0.0) -> None:
        self.queue.add_after(key, after)

    def enqueue_all(self) -> int:
        keys = self.primary.keys() if self.primary else []
        for k in keys:
            self.queue.add(k)
        return len(keys)

    # --- pause / resume --------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        if self._running.is_set():
            self._running.clear()
            log.info("controller paused", extra={"controller": self.name})

    def resume(self) -> None:
        if not self._running.is_set():
            self._running.set()
            n = self.enqueue_all()
            log.info("controller resumed, full resync", extra={"controller": self.name, "objects": n})

    def idle(self) -> bool:
        """True when nothing is queued or being processed (tests use it to wait for convergence)."""
        with self._busy_lock:
            return self._busy == 0 and self.queue.pending() == 0

    # --- run -------------------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"{self.name}-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._resync_loop, name=f"{self.name}-resync", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._running.set()  # wake paused workers so they see the shutdown
        self.queue.shutdown()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) if self._threads else False

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_period):
            if not self.paused:
                self.enqueue_all()

    def _worker(self) -> None:
        while not self._stop.is_set():
            self._running.wait()
            try:
                key = self.queue.get(timeout=0.5)
            except ShutDown:
                return
            self.metrics.queue_depth.labels(self.name).set(self.queue.pending())
            if key is None:
                continue
            if self.paused:
                # Paused between get() and here: put it back for after resume.
                self.queue.done(key)
                self.queue.add(key)
                continue
            with self._busy_lock:
                self._busy += 1
            try:
                self._process(key)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                self.queue.done(key)

    def _process(self, key: str) -> None:
        start = time.monotonic()
        try:
            after = self.reconcile(key)
        except Exception as e:
            delay = self.queue.add_rate_limited(key)
            self.metrics.errors.labels(self.name).inc()
            self.metrics.reconciles.labels(self.name, "error").inc()
            log.warning(
                "reconcile failed",
                extra={"controller": self.name, "key": key, "error": str(e) or type(e).__name__,
                       "retry_in": round(delay, 2), "attempt": self.queue.failures(key)},
                exc_info=not isinstance(e, RetryableError),
            )
            return
        finally:
            self.metrics.duration.labels(self.name).observe(time.monotonic() - start)
        self.queue.forget(key)
        if after is not None:
            self.metrics.reconciles.labels(self.name, "requeue").inc()
            self.queue.add_after(key, after)
        else:
            self.metrics.reconciles.labels(self.name, "success").inc()


class RetryableError(Exception):
    """An expected, transient failure (dependency not ready, netagent unavailable): retried with
    backoff and logged without a traceback."""


class Manager:
    """Owns the API client, metrics, the health endpoint and everything that runs; `run()` blocks
    until SIGTERM/SIGINT (or `stop()`), then shuts down in reverse order."""

    def __init__(
        self,
        component: str,
        client: KubeClient,
        *,
        metrics_bind_address: str = "",
        health_bind_address: str = "",
        metrics_server: HttpEndpoint | None = None,
        health_server: HttpEndpoint | None = None,
        pod_name: str = "",
        watch_timeout: int = 300,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.component = component
        self.client = client
        self.metrics = metrics or ControllerMetrics()
        self.events = EventRecorder(client, component, pod_name)
        self.watch_timeout = watch_timeout
        self.informers: list[Informer] = []
        self.controllers: list[Controller] = []
        self._runnables: list[tuple[str, Callable[[threading.Event], None]]] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._health_checks: list[Callable[[], bool]] = []
        # /metrics and /healthz, /readyz: given already bound (run_component binds them before anything
        # starts, so a busy port is a clean error), or bound here from an address ("" = off).
        if metrics_server is None and metrics_bind_address:
            metrics_server = metrics_endpoint(metrics_bind_address, self.metrics.registry)
        elif metrics_server is not None:
            metrics_server.route("/metrics", metrics_route(self.metrics.registry))
        if health_server is None and health_bind_address:
            health_server = health_endpoint(health_bind_address, self.healthy, self.ready)
        elif health_server is not None:
            for path, fn in health_routes(self.healthy, self.ready).items():
                health_server.route(path, fn)
        self.metrics_server = metrics_server
        self.health_server = health_server

    def informer(
        self,
        ref: ResourceRef,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Informer:
        """A new informer on the manager's client, started and stopped with the manager."""
        inf = Informer(
            self.client,
            ref,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            watch_timeout=self.watch_timeout,
        )
        self.informers.append(inf)
        return inf

    def add_controller(self, controller: Controller) -> Controller:
        self.controllers.append(controller)
        return controller

    def add_runnable(self, name: str, fn: Callable[[threading.Event], None]) -> None:
        """A background loop `fn(stop_event)` that returns soon after stop_event is set."""
        self._runnables.append((name, fn))

    def add_health_check(self, check: Callable[[], bool]) -> None:
        self._health_checks.append(check)

    def healthy(self) -> bool:
        threads_ok = all(t.is_alive() for t in self._threads)
        return threads_ok and all(c.alive() for c in self.controllers) and all(
            chk() for chk in self._health_checks
        )

    def ready(self) -> bool:
        return self.healthy() and all(i.has_synced for i in self.informers)

    @property
    def stopping(self) -> threading.Event:
        return self._stopping

    def start(self) -> None:
        for endpoint in self._endpoints():
            endpoint.start()
        for inf in self.informers:
            inf.start()
        for c in self.controllers:
            c.start()
        for name, fn in self._runnables:
            t = threading.Thread(target=self._guard, args=(name, fn), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        threading.Thread(target=self._watch_gauges, name="gauges", daemon=True).start()

    def _guard(self, name: str, fn: Callable[[threading.Event], None]) -> None:
        # A crashing loop is logged and restarted with backoff rather than silently lost.
        failures = 0
        backoff = Backoff(base=0.5, cap=30.0)
        while not self._stopping.is_set():
            try:
                fn(self._stopping)
                return
            except Exception:
                log.exception("background loop crashed, restarting", extra={"loop": name})
                self._stopping.wait(backoff.delay(failures))
                failures += 1

    def _watch_gauges(self) -> None:
        while not self._stopping.wait(1.0):
            for inf in self.informers:
                self.metrics.watch_connected.labels(inf.name).set(1 if inf.connected else 0)
            for c in self.controllers:
                self.metrics.queue_depth.labels(c.name).set(c.queue.pending())

    def stop(self) -> None:
        self._stopping.set()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        for c in self.controllers:
            c.stop(timeout)
        for inf in self.informers:
            inf.stop(timeout)
        for t in self._threads:
            t.join(timeout)
        for endpoint in self._endpoints():
            endpoint.stop()

    def _endpoints(self) -> list[HttpEndpoint]:
        return [e for e in (self.metrics_server, self.health_server) if e is not None]

    def close_endpoints(self) -> None:
        """Releases the endpoints' ports when the manager never ran (a failed start)."""
        for endpoint in self._endpoints():
            endpoint.stop()

    def run(self) -> int:
        """Starts everything, waits for SIGTERM/SIGINT, shuts down. Returns the exit code."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received, shutting down", extra={"signal": signal.Signals(signum).name})
            self._stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not self._stopping.wait(1.0):
            pass
        self.shutdown()
        log.info("stopped")
        return 0
