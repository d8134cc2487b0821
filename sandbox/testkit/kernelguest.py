"""A real Linux kernel with the WireGuard module, for the kernel path's tests and benchmarks.

This machine's kernel has no WireGuard module, so `KernelGuest` boots Debian's stock kernel in QEMU
(software emulation: no KVM here) with this machine's root file system and the project shared
read-only over 9p and one writable shared folder, both at their paths on the host. The guest has no
network device at all: the host's network is never touched. A script runs inside as root, in the
host's file system (so the project, its venv and every tool are there), with tmpfs on /tmp, /run and
/var/*; its exit status, console and any file it writes to the shared folder come back. Boot to the
script: about 3 s.

The boot files come from `scripts/kernel-guest/build-boot.sh` (kept in build/kernel-guest, rebuilt
when the script or the guest's /init changes).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.testkit.hosts import dies_with_us

__all__ = ["BOOT_DIR", "GuestRun", "KernelGuest", "RunningGuest", "boot_files", "python_script"]

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "kernel-guest"
BOOT_DIR = ROOT / "build" / "kernel-guest"
TOOLS = ("qemu-system-x86_64", "busybox", "depmod", "apt-get")


def boot_files(out: Path = BOOT_DIR) -> tuple[Path, Path]:
    """(kernel, initramfs), built first when missing or older than their recipe."""
    kernel, initramfs = out / "vmlinuz", out / "initramfs.cpio.gz"
    recipe = max((SCRIPTS / n).stat().st_mtime for n in ("build-boot.sh", "init"))
    if not (kernel.exists() and initramfs.exists() and initramfs.stat().st_mtime >= recipe):
        r = subprocess.run([str(SCRIPTS / "build-boot.sh"), str(out)], capture_output=True, text=True,
                           timeout=600, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"build-boot.sh exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return kernel, initramfs


@dataclass(frozen=True)
class GuestRun:
    returncode: int | None  # the script's; None when the guest never reported one (crash, timeout)
    seconds: float  # wall time from QEMU's start to its exit
    share: Path  # the shared folder, with what the script wrote
    timed_out: bool

    @property
    def console(self) -> str:
        """The guest's serial console (kernel messages, /init's lines, the script's output)."""
        try:
            return (self.share / "console.log").read_text(errors="replace")
        except OSError as e:
            return f"<no console: {e}>"


class KernelGuest:
    """One guest boot per `start()`: `cpus` vCPUs (TCG threads) and `memory_mb` of RAM."""

    def __init__(self, *, cpus: int = 2, memory_mb: int = 1536, boot_dir: Path = BOOT_DIR) -> None:
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.boot_dir = boot_dir

    def argv(self, share: Path, script: Path) -> list[str]:
        kernel, initramfs = boot_files(self.boot_dir)
        return [
            "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{share / 'console.log'}",
            "-kernel", str(kernel), "-initrd", str(initramfs),
            "-append", f"console=ttyS0 quiet loglevel=4 panic=-1 kgt.script={script} kgt.share={share}"
                       f" kgt.project={ROOT}",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={ROOT},mount_tag=project,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={share},mount_tag=share,security_model=none",
            "-device", "virtio-rng-pci",
        ]

    def start(self, script: str, share: Path) -> RunningGuest:
        """Boots a guest that runs the bash `script`; `share` (created, emptied of a previous run's
        results) is the writable shared folder. QEMU is killed when the calling thread dies."""
        share.mkdir(parents=True, exist_ok=True)
        for stale in ("rc", "console.log"):
            (share / stale).unlink(missing_ok=True)
        path = share / "script.sh"
        path.write_text(script)
        with (share / "qemu.log").open("w") as qemu_log:
            proc = subprocess.Popen(dies_with_us(self.argv(share, path)), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=qemu_log)
        return RunningGuest(proc, share, time.monotonic())

    def run(self, script: str, share: Path, timeout: float) -> GuestRun:
        """`start()`, then waits for the guest to power off (killed at `timeout` seconds)."""
        return self.start(script, share).wait(timeout)


@dataclass
class RunningGuest:
    proc: subprocess.Popen[bytes]
    share: Path
    started: float

    def wait(self, timeout: float) -> GuestRun:
        timed_out = False
        try:
            self.proc.wait(timeout=max(0.0, self.started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
        seconds = time.monotonic() - self.started
        try:
            rc: int | None = int((self.share / "rc").read_text().strip())
        except (OSError, ValueError):
            rc = None
        return GuestRun(rc, seconds, self.share, timed_out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def python_script(argv: list[str], env: dict[str, str], *, output: Path | None = None,
                  cwd: Path = ROOT) -> str:
    """A guest script that runs `argv` in `cwd` with this Python's venv first on PATH, `env` added and
    no bytecode written (the root is read-only in the guest); stdout and stderr go to `output` (in
    the shared folder) when given, else to the console."""
    q = shlex.quote
    redirect = f" > {q(str(output))} 2>&1" if output is not None else ""
    lines = [f"cd {q(str(cwd))}",
             f'export PATH={q(str(Path(sys.executable).parent))}:"$PATH" PYTHONDONTWRITEBYTECODE=1',
             *(f"export {k}={q(v)}" for k, v in env.items()),
             f"{shlex.join(argv)}{redirect}"]
    return "\n".join(lines) + "\n"
