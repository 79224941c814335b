"""The documentation site (mkdocs.yml, docs/): it builds in strict mode (a broken link, a page
missing from the nav or an unresolved reference fails), the HTTP API page and docs/openapi.json
match the application, the Python reference covers every public name, and nothing in the
repository points outside it."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from griffe_doctest import fence_doctests  # noqa: E402


def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    assert importlib.util.find_spec("mkdocs") is not None, (
        "mkdocs is missing: pip install -r docs/requirements.txt (also in requirements-dev.txt)"
    )
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (site / "reference" / "python" / "index.html").read_text()
    for name in ("resumeflow.Engine", "resumeflow.Workflow", "resumeflow.RetryPolicy"):
        assert f'id="{name}"' in reference, name
    assert (site / "openapi.json").is_file()


def test_http_api_page_and_openapi_json_are_current() -> None:
    pytest.importorskip("fastapi")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "openapi_doc.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _public_names() -> list[str]:
    tree = ast.parse((ROOT / "python" / "resumeflow" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError("no __all__ in resumeflow/__init__.py")


def test_python_reference_covers_every_public_name() -> None:
    page = (ROOT / "docs" / "reference" / "python.md").read_text()
    documented = set(re.findall(r"^::: resumeflow\.(\w+)$", page, re.M))
    documented |= set(re.findall(r"^\| `(\w+)` \|", page, re.M))  # the errors table
    missing = [name for name in _public_names() if name not in documented]
    assert not missing, f"not in docs/reference/python.md: {missing}"


# A path into the steering folder beside the checkout, or one of its documents by name.
OUTSIDE = re.compile(
    r"(?<![\w-])(?:\.\./)?shared/|\b(?:API|ARCHITECTURE|BENCHMARKS|STYLE)\.md\b"
)


def test_nothing_refers_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
        text=True, check=True,
    ).stdout.split()
    hits = []
    for rel in files:
        path = ROOT / rel
        if rel == "tests/test_docs.py" or path.suffix not in {
            ".py", ".pyi", ".md", ".rs", ".toml", ".sh", ".yml", ".yaml", ".txt", ".js", ".html",
        } or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{rel}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_doctests_are_fenced_for_the_reference() -> None:
    text = "Runs it.\n\n>>> engine.run(wf).status\n'completed'\n\nThen more."
    assert fence_doctests(text) == (
        "Runs it.\n\n```pycon\n>>> engine.run(wf).status\n'completed'\n```\n\nThen more."
    )
    fenced = "```python\n>>> not a doctest\n```"
    assert fence_doctests(fenced) == fenced
