"""The API contract: buf lint/format clean, no breaking change against HEAD, generated code fresh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("buf", path=str(BIN)) or shutil.which("buf")
    if exe is None:
        pytest.fail("buf is not installed: run make install")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_buf_lint_standard_is_clean() -> None:
    r = buf("lint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_buf_format_is_clean() -> None:
    r = buf("format", "--diff", "--exit-code")
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_breaking_change_against_head() -> None:
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    r = buf("breaking", "--against", ".git#ref=HEAD")
    assert r.returncode == 0, r.stdout + r.stderr


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "api"
    subprocess.run(
        [str(ROOT / "scripts/gen-proto.sh"), sys.executable, str(out), "services.api"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    committed = ROOT / "services/api/netagent/v1"
    fresh = out / "netagent/v1"
    names = sorted(p.name for p in committed.glob("*.py*"))
    assert names == sorted(p.name for p in fresh.glob("*.py*")), "generated file set changed: run make proto"
    for name in names:
        assert (fresh / name).read_text() == (committed / name).read_text(), (
            f"{name} is stale: run make proto"
        )
