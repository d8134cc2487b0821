"""`liqo-netagent wireguard` (the pod's wireguard container): the implementation is resolved as
`serve` resolves it, userspace execs `wireguard-go -f DEVICE` (no Python left), kernel idles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.netagent import wgcontainer
from services.netagent.config import AgentConfig
from services.netagent.kernel.wireguard import choose_implementation

ROOT = Path(__file__).resolve().parents[2]


def test_userspace_execs_wireguard_go_in_the_foreground() -> None:
    ran: list[str] = []
    assert wgcontainer.run(AgentConfig(wireguard_implementation="userspace", wg_device="wg-x"),
                           execute=ran.append, idle=lambda: pytest.fail("must not idle")) == 0
    assert ran == ["wg-x"]


def test_kernel_idles_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wgcontainer, "resolve", lambda cfg: "kernel")
    idled: list[bool] = []
    assert wgcontainer.run(AgentConfig(wireguard_implementation="auto"),
                           execute=lambda d: pytest.fail("must not exec"),
                           idle=lambda: idled.append(True) or 0) == 0
    assert idled == [True]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_idle_exits_0_on_sigterm_and_sigint(sig: int) -> None:
    """What the kernel implementation's container runs until the pod stops."""
    code = ("from services.netagent.wgcontainer import wait_for_signal\n"
            "raise SystemExit(wait_for_signal(ready=lambda: print('idle', flush=True)))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "idle\n"
        proc.send_signal(sig)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_the_decision_is_serves() -> None:
    """Both containers go through choose_implementation: an existing device keeps its kind."""
    assert choose_implementation("auto", "tun", True) == "userspace"
    assert choose_implementation("auto", "wireguard", False) == "kernel"
    assert choose_implementation("auto", None, False) == "userspace"


def test_exec_leaves_no_python(tmp_path: Path) -> None:
    """The process IS wireguard-go afterwards: same PID, its argv, nothing of Python around it."""
    fake = tmp_path / "wireguard-go"
    fake.write_text('#!/bin/sh\necho "$$ $0 $*"\n')
    fake.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "services.netagent.main", "wireguard",
                             "--wireguard-implementation", "userspace", "--wg-device", "liqo.tunnel"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    pid, argv0, args = out.split(" ", 2)
    assert int(pid) == proc.pid and argv0.endswith("wireguard-go") and args.strip() == "-f liqo.tunnel"


def test_a_missing_binary_is_one_line(tmp_path: Path) -> None:
    cp = subprocess.run([sys.executable, "-m", "services.netagent.main", "wireguard",
                         "--wireguard-implementation", "userspace"], cwd=ROOT, capture_output=True,
                        text=True, timeout=30, env={**os.environ, "PATH": str(tmp_path)}, check=False)
    assert cp.returncode == 1
    assert cp.stderr == "liqo-netagent wireguard: cannot run wireguard-go: No such file or directory\n"
