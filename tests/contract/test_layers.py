"""The layer rules hold, and they are real: each import-linter contract in pyproject.toml passes on the
tree and fails on a copy of the tree with one forbidden import planted. The product package ships no
sandbox, and no test module imports another one."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "sandbox", "tests", "bench")


def lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed: run make install")
    argv = [exe, "--no-cache", *(a for c in contracts for a in ("--contract", c))]
    # PYTHONPATH first, so that a copy of the tree shadows the editable installs of the real one.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def contract_ids() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [c["id"] for c in config["tool"]["importlinter"]["contracts"]]


def test_every_contract_holds() -> None:
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Contracts: {len(contract_ids())} kept, 0 broken." in r.stdout


# (contract, module that gets the import, the forbidden import); every contract has a row.
PLANTS = [
    ("netagent-no-kube", "services/netagent/config.py", "import services.common.kube"),
    ("netagent-no-kube", "services/netagent/config.py", "import kubernetes.client"),
    ("services-own-netlink", "services/netagent/kernel/netlink/rtnl.py", "import pyroute2.iproute"),
    ("services-own-netlink", "services/common/netns.py", "from pyroute2 import IPRoute"),
    ("services-layers", "services/natmap/mapping.py", "import services.tunnel.controller"),
    ("services-layers", "services/tunnel/status.py", "import services.netagent.agent"),
    ("services-layers", "services/common/logging.py", "import services.labeler.elector"),
    ("services-layers", "services/status/report.py", "import services.netagent.agent"),
    ("services-layers", "services/common/logging.py", "import services.status.report"),
    ("product-no-dev", "services/common/logging.py", "import sandbox.testkit.wait"),
    ("product-no-dev", "services/netagent/config.py", "import tests.conftest"),
    ("no-test-imports", "bench/kubeapi_rps.py", "import tests.conftest"),
    ("no-test-imports", "sandbox/testkit/wait.py", "import tests.conftest"),
]


def test_every_contract_has_a_plant() -> None:
    assert {c for c, _, _ in PLANTS} == set(contract_ids())


@pytest.mark.parametrize(("contract", "module", "line"), PLANTS, ids=[f"{c}:{m}" for c, m, _ in PLANTS])
def test_a_planted_forbidden_import_breaks_its_contract(tmp_path: Path, contract: str, module: str,
                                                        line: str) -> None:
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert lint_imports(tmp_path, contract).returncode == 0, "the copy must pass before the plant"
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # planted\n")
    r = lint_imports(tmp_path, contract)
    assert r.returncode != 0, r.stdout
    planted = line.split()[1]
    assert planted.split(".")[0] in r.stdout and "BROKEN" in r.stdout, r.stdout


def test_the_product_wheel_ships_no_sandbox(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = tmp_path.glob("liqo_gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"services"}, tops
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "liqo-kubeapi" not in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_sandbox_distribution_lists_every_sandbox_package() -> None:
    config = tomllib.loads((ROOT / "sandbox/pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(("sandbox", *p.parent.relative_to(ROOT / "sandbox").parts))
        for p in (ROOT / "sandbox").rglob("__init__.py")
        if "build" not in p.parts
    }
    assert listed == on_disk


def test_no_test_module_imports_another() -> None:
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "tests"]
    assert not offenders, offenders
