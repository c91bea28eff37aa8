"""The code's layering, as import-linter contracts (``[tool.importlinter]`` in pyproject.toml): the library never
imports jobs/ or benchmarks/; jobs/ above toolformer/experiments/, above the jobs' libraries (annotate, train,
evaluation, cstar, prepare), above toolformer/run/, which imports none of them; reading a corpus never imports
evaluation or training, tools never import the annotation stages, no import cycles inside toolformer/ (counting
TYPE_CHECKING imports). At most ten modules at the library's root. And no source file over 400 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "No import cycles inside toolformer KEPT" in proc.stdout
    assert "jobs > experiments > the jobs' libraries > the run's state KEPT" in proc.stdout
    assert "A run's state on its store imports no job's library KEPT" in proc.stdout


def test_the_library_root_holds_only_what_every_layer_shares():
    """A package per job or concern: at most ten modules at toolformer/'s root, and no two of them share a prefix
    (``math_report``, ``math_page``: a package is missing)."""
    root = sorted(p.stem for p in (REPO / "toolformer").glob("*.py") if p.name != "__init__.py")
    assert len(root) <= 10, root
    prefixes = [name.split("_")[0] for name in root if "_" in name]
    assert len(prefixes) == len(set(prefixes)), root


def test_a_broken_contract_fails(tmp_path):
    """The check can fail: a copy of the package where corpus imports evaluation breaks its contract."""
    import shutil

    pkg = tmp_path / "toolformer"
    shutil.copytree(REPO / "toolformer", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("jobs", "benchmarks"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
    (pkg / "corpus" / "chunking.py").write_text((pkg / "corpus" / "chunking.py").read_text()
                                                 + "\nfrom toolformer.evaluation import scoring  # noqa\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", "pyproject.toml", "--no-cache"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "Reading a corpus never imports evaluation or training BROKEN" in proc.stdout, \
        proc.stdout[-3000:]


def test_no_source_file_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for folder in ("toolformer", "jobs", "benchmarks")
            for p in (REPO / folder).rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split by responsibility: {long}"
