"""SIGTERM ends a job with its own code (issue 43 item 4): 143, the lease released, "rerun heals". A signal that
lands inside a Ray call comes out of Ray as its own ``SystemExit(1)`` (``ray.get`` turns whatever the handler
raised into that); the job still ends with 143. The Ray driver itself: ``tests/test_ray_job.py`` (make test-slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("inside_ray_get", [False, True])
def test_sigterm_ends_a_job_with_143_and_releases_its_lease(tmp_path, inside_ray_get):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, time
        from jobs.cli import run_job
        from toolformer.run.lease import Lease
        from toolformer.run.store import Store

        def body(cfg):
            with Lease(Store({str(tmp_path / 'run')!r}), ttl_s=60, heartbeat_s=5, log=lambda _: None):
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(30)
                except SystemExit:
                    if {inside_ray_get!r}:  # what ray.get does with the handler's exception
                        raise SystemExit(1) from None
                    raise

        sys.exit(run_job("a job", ["--verbose", "output_dir={tmp_path / 'out'}"], None, "job", body))
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "stopped by SIGTERM" in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "_lease.json").exists()  # released on the way out
