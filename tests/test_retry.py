"""jobs.retry (issue 43 item 4): the job's own resubmission reruns on the codes a rerun heals, never on the others."""

from __future__ import annotations

import sys

import pytest

from jobs.retry import RERUN_HEALS, main


def _exits(tmp_path, codes: list[int]) -> list[str]:
    """A command that exits with the next of ``codes`` each run (a counter file says which run it is)."""
    script = tmp_path / "job.py"
    script.write_text(f"import pathlib, sys\np = pathlib.Path({str(tmp_path / 'n')!r})\n"
                      f"n = int(p.read_text()) if p.exists() else 0\np.write_text(str(n + 1))\n"
                      f"sys.exit({codes!r}[min(n, {len(codes) - 1})])\n")
    return [sys.executable, str(script)]


def _runs(tmp_path) -> int:
    return int((tmp_path / "n").read_text())


@pytest.mark.parametrize("code", RERUN_HEALS)
def test_a_code_a_rerun_heals_is_rerun_until_it_succeeds(tmp_path, code):
    assert main(["--wait-s", "0", "--", *_exits(tmp_path, [code, code, 0])]) == 0
    assert _runs(tmp_path) == 3


@pytest.mark.parametrize("code", [1, 2, 3])
def test_a_code_that_needs_a_human_ends_it_at_once(tmp_path, code):
    assert main(["--wait-s", "0", "--", *_exits(tmp_path, [code, 0])]) == code
    assert _runs(tmp_path) == 1


def test_the_reruns_are_bounded(tmp_path):
    assert main(["--tries", "3", "--wait-s", "0", "--", *_exits(tmp_path, [143])]) == 143
    assert _runs(tmp_path) == 3


def test_the_rayjob_runs_its_job_through_it():
    from pathlib import Path

    import yaml

    job = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster" / "rayjob.yaml").read_text())
    assert job["spec"]["entrypoint"].startswith("python -m jobs.retry -- python -m jobs.annotate")
