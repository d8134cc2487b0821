"""Converges the Liqo-owned iptables state of a network namespace to a `natrules.Ruleset`.

Reads with one `iptables-legacy-save`, writes only the difference as ONE
`iptables-legacy-restore --noflush` per changed table: the kernel swaps each table atomically, so a
failed write changes nothing in that table, and a one-rule change costs a one-line script instead of
a rewrite. Only `LIQO-*` chains and, in other chains, rules jumping to a `LIQO-*` chain are touched.

The save parser and the script builder are `services.netagent.plan.iptables` (pure, unit-tested);
`Iptables` runs them.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading

from services.common.netns import nsenter_argv
from services.netagent.kernel.netns import netns_path
from services.netagent.plan.iptables import IptablesError, parse_save, table_order, table_script
from services.netagent.plan.natrules import Ruleset, gc_paused

__all__ = ["Iptables"]

log = logging.getLogger(__name__)

ENCODING_ERRORS = "surrogateescape"
SAVE = "iptables-legacy-save"
RESTORE = "iptables-legacy-restore"
SUFFIX_RE = re.compile(r"LIQO-(?:PSTRT|PRRT|PRRT-MAP|FRWD-EXT)-CLS-([0-9a-f]+)")  # fullmatch


class Iptables:
    """The Liqo-owned iptables of one named network namespace (`None`: the current one).

    Keeps what it last read or wrote, so converging an unchanged state runs no process and a change
    writes a diff without reading the table first. Any failure drops that cache; `invalidate()` does
    it on demand (e.g. periodically, to repair changes made behind the agent's back)."""

    def __init__(self, netns: str | None, *, lock_wait: int = 10, timeout: float = 60.0) -> None:
        self._ns_file = netns_path(netns) if netns is not None else None  # ValueError on a bad name
        self.netns = netns
        self._lock_wait = lock_wait
        self._timeout = timeout
        self._cache: Ruleset | None = None
        self._mutex = threading.Lock()
        self.restores = 0  # restore processes run so far (observability and tests)

    def _argv(self, *cmd: str) -> list[str]:
        return list(cmd) if self._ns_file is None else nsenter_argv(self._ns_file, cmd)

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        # Bytes, decoded with surrogateescape: iptables-save prints whatever others wrote (a comment
        # cut inside a UTF-8 character), and a rule read back must go out as the same bytes.
        try:
            proc = subprocess.run(
                self._argv(*argv), input=None if stdin is None else stdin.encode("utf-8", ENCODING_ERRORS),
                capture_output=True, timeout=self._timeout, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise IptablesError(f"{argv[0]}: {e}") from e
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace")
            raise IptablesError(f"{argv[0]} exited {proc.returncode}: {_explain(stderr, stdin)}")
        return proc.stdout.decode("utf-8", ENCODING_ERRORS)

    def _read(self) -> Ruleset:
        self._cache = None
        text = self._run([SAVE])
        with gc_paused():
            state = parse_save(text)
        self._cache = state
        return state

    def _restore(self, script: str) -> None:
        self.restores += 1
        self._run([RESTORE, "--noflush", "-w", str(self._lock_wait)], script)

    def read(self) -> Ruleset:
        """What the kernel holds now (always re-read; refreshes the cache)."""
        with self._mutex:
            return self._read()

    def invalidate(self) -> None:
        """Forget the cached view: the next apply re-reads the kernel first."""
        with self._mutex:
            self._cache = None

    def apply(self, desired: Ruleset) -> bool:
        """Converge to `desired`; True if something was written. On failure every table is left as
        it was and IptablesError is raised. A failure from a stale cache is retried once after a
        fresh read."""
        with self._mutex:
            try:
                return self._apply(desired)
            except IptablesError as e:
                log.warning("iptables apply failed, re-reading and retrying once", extra={"error": str(e)})
                self._cache = None
                try:
                    return self._apply(desired)
                except IptablesError:
                    self._cache = None
                    raise

    def _apply(self, desired: Ruleset) -> bool:
        current = self._cache if self._cache is not None else self._read()
        tables = sorted(current.tables.keys() | desired.tables.keys(), key=table_order)
        scripts: list[tuple[str, str]] = []
        with gc_paused():
            for table in tables:
                script = table_script(table, current.table(table), desired.table(table))
                if script is not None:
                    scripts.append((table, script))
        if not scripts:
            return False
        done: list[str] = []
        for table, script in scripts:
            try:
                self._restore(script)
            except IptablesError:
                self._roll_back(done, current, desired)
                raise
            done.append(table)
        self._cache = Ruleset({t: dict(desired.table(t)) for t in tables if desired.table(t)})
        return True

    def _roll_back(self, done: list[str], before: Ruleset, after: Ruleset) -> None:
        """Tables are atomic one by one: undo those already committed when a later one fails."""
        for table in reversed(done):
            script = table_script(table, after.table(table), before.table(table))
            if script is None:
                continue
            try:
                self._restore(script)
            except IptablesError as e:  # the next apply re-reads and converges anyway
                log.error("iptables roll back failed", extra={"table": table, "error": str(e)})

    def remove_all(self) -> None:
        """Delete every LIQO chain and every jump into one (cleanup); nothing else."""
        with self._mutex:
            self._read()
            self._apply(Ruleset())

    def cluster_suffixes(self) -> set[str]:
        """Chain suffixes of the per-cluster chains present in the kernel (fresh read)."""
        state = self.read()
        chains = (chain for owned in state.tables.values() for chain in owned)
        return {m.group(1) for chain in chains if (m := SUFFIX_RE.fullmatch(chain))}


def _explain(stderr: str, script: str | None) -> str:
    """The tool's message plus the script line it blames, if any."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("Try `")]
    msg = "; ".join(lines) or "no message"
    m = re.search(r"line (\d+) failed|at line: (\d+)", stderr)
    if m and script is not None:
        lines = script.split("\n")
        n = int(m.group(1) or m.group(2))
        if 0 < n <= len(lines):
            msg += f" (script line {n}: {lines[n - 1][:200]})"
    return msg
