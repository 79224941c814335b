"""Packaging: the extras the wheel declares and what each imports, and the wheel itself (its
platform tag and the files a user needs). The fresh-venv checks on CPython 3.11 / 3.12 / 3.13
are scripts/check-wheel.sh (run by scripts/test.sh)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What each extra makes importable.
EXTRA_MODULES = {
    "torch": ["torch", "numpy"],
    "langgraph": ["resumeflow.langgraph"],
    "server": ["resumeflow.server", "resumeflow.server.app"],
    "mcp": ["resumeflow.server.mcp_tools", "resumeflow.server.mcp_stdio"],
    "otel": ["resumeflow.tracing", "opentelemetry.trace"],
}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_extra_is_declared_and_all_covers_them():
    extras = _project()["optional-dependencies"]
    assert set(EXTRA_MODULES) | {"all", "dev"} == set(extras)
    (everything,) = extras["all"]
    assert everything == f"resumeflow[{','.join(EXTRA_MODULES)}]"


@pytest.mark.parametrize("extra", sorted(EXTRA_MODULES))
def test_each_extra_imports(extra):
    code = "; ".join(f"import {m}" for m in EXTRA_MODULES[extra])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_metadata_names_the_licence_pythons_and_urls():
    project = _project()
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("\n                                 Apache License")
    versions = {c.rsplit(":: ", 1)[1] for c in project["classifiers"] if c.startswith("Programming Language :: Python :: 3.")}
    assert versions == {"3.11", "3.12", "3.13"}
    assert {"Source", "Documentation", "Issues"} <= set(project["urls"])


def test_the_built_wheel_is_manylinux_abi3_and_carries_licence_types_and_monitor():
    wheels = sorted((ROOT / "dist").glob("resumeflow-*.whl"))
    if not wheels:
        pytest.skip("no wheel in dist/: scripts/build-wheel.sh (run by scripts/setup-venv.sh) builds it")
    wheel = wheels[-1]
    assert "-cp311-abi3-" in wheel.name and "manylinux_2_17_x86_64" in wheel.name, wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("resumeflow/py.typed", "resumeflow/_core.pyi", "resumeflow/server/monitor/index.html"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert any(n.startswith("resumeflow/_core.") and n.endswith(".so") for n in names)
