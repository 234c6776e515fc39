"""The distribution installs: a wheel built from this tree carries every package directory,
and the installed copy runs on its own, away from the source tree and the editable install.

Nothing is installed from the network: the wheel is built and installed with --no-deps (an
unpinned torch would pull gigabytes of CUDA wheels); the dependencies come from the venv's
site-packages, put on the path by hand while `python -S` keeps the editable install's path
hook (a .pth file) out.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("gossipmed", "node", "topology")

pytestmark = pytest.mark.slow


def source_packages() -> set[str]:
    return {
        str(init.parent.relative_to(ROOT)).replace(os.sep, ".")
        for top in TOP
        for init in (ROOT / top).rglob("__init__.py")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("gossipmed-*.whl")
    return built


def test_the_wheel_carries_every_package_directory_of_the_source(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    shipped = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert source_packages() <= shipped, sorted(source_packages() - shipped)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_the_wheel_carries_the_dashboard_page(wheel: Path) -> None:
    from node.report.dashboard import ASSETS

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in ASSETS:
            path = f"node/report/dashboard/{name}"
            assert path in names
            assert zf.read(path) == (ROOT / path).read_bytes()


def test_the_installed_wheel_runs_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), *site.getsitepackages()]),
        "HF_HUB_OFFLINE": "1",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", *args],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    where = run("-c", "import gossipmed, node, topology; print(gossipmed.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(target))  # not the source tree
    imports = "import importlib\n" + "".join(
        f"importlib.import_module({name!r})\n" for name in sorted(source_packages())
    )
    assert run("-c", imports).returncode == 0
    page = run("-c", "from node.report.dashboard import asset; print(len(asset('index.html')))")
    assert page.returncode == 0 and int(page.stdout) > 0, page.stderr
    helped = run(str(target / "bin" / "gossipmed"), "--help")
    assert helped.returncode == 0 and "simulate" in helped.stdout, helped.stderr
    topo = run(str(target / "bin" / "gossipmed"), "topology", "ring", "--nodes", "4", "--json")
    assert topo.returncode == 0, topo.stderr
    assert '"nodes": 4' in topo.stdout
