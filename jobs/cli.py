"""What every job's command line shares: ``--config FILE`` and dotted overrides (``key.sub=value``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Sequence

from toolformer.config import RunConfig, load_config


def offline_by_default() -> None:
    """Hub lookups fail in 2 s instead of retrying for 46 s when there is no network; a user with
    network access sets HF_HUB_OFFLINE=0."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's per-request INFO lines drown a job's own output; VLLM_LOGGING_LEVEL=INFO brings them back.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def config_help() -> str:
    """Every config key with its default and the comment beside it in toolformer/config/schema.py."""
    from toolformer.config import config_reference

    rows = config_reference()
    width = max(len(k) for k, _, _ in rows)
    lines = ["config keys (override any with key.sub=value; defaults before the YAML file applies):"]
    for key, default, comment in rows:
        shown = default if len(default) <= 40 else default[:37] + "..."
        lines.append(f"  {key.ljust(width)}  {shown}" + (f"   # {comment}" if comment else ""))
    return "\n".join(lines)


def parse(description: str, argv: Sequence[str] | None = None, default_config: str | None = None) -> tuple[RunConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=description, epilog=config_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config, help="YAML config (see jobs/configs/)")
    parser.add_argument("--verbose", action="store_true",
                        help="engine and framework output on the terminal too (otherwise in <output_dir>/logs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. corpus.limit=10 annotate.tools=[Calculator]")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must look like key.sub=value, got: {' '.join(bad)}")
    try:
        cfg = load_config(args.config, args.overrides)
        from toolformer.annotate.placement import check_parallelism
        from toolformer.tools import check_tool_options

        check_tool_options(cfg)
        check_parallelism(cfg)
    except Exception as exc:  # omegaconf's errors name the bad key; show that, not a traceback
        lines = str(exc).splitlines()
        key = next((line.split(":", 1)[1].strip() for line in lines if "full_key:" in line), None)
        parser.error(f"{key}: {lines[0]}" if key else lines[0])
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    return cfg, args


EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped from outside (a spot node reclaimed, a pod evicted); a rerun resumes
EXIT_TRANSIENT = 76  # an error a rerun would heal (annotate/transient.py) escaped the job outside an annotate pass


class Terminated(SystemExit):
    """SIGTERM: unwinds the job (the lease is released on the way out), exit 143."""

    def __init__(self):
        super().__init__(EXIT_TERMINATED)
        self.last_line = (f"stopped by SIGTERM: the run's lease was released and what was committed is kept; the same "
                          f"command resumes it (exit {EXIT_TERMINATED})")


_TERMINATED: list[bool] = []  # set by the handler: what the job ends with, whatever it is doing when told


def _on_sigterm(signum, frame) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    _TERMINATED.append(True)
    raise Terminated()


def run_job(description: str, argv: Sequence[str] | None, default_config: str | None, job: str,
            fn: Callable[[RunConfig], Any]) -> Any:
    """What every config-driven job does: offline by default, parse the config, route framework output to
    ``<output_dir>/logs/<job>.log`` (unless ``--verbose``), run ``fn(cfg)``. SIGTERM unwinds it (exit 143, the
    lease released); an error a rerun would heal ends it with exit 76 (docs/operations.md, exit codes)."""
    import signal
    import threading

    from toolformer.console import job_console

    offline_by_default()
    cfg, args = parse(description, argv, default_config)
    before = None
    _TERMINATED.clear()
    if threading.current_thread() is threading.main_thread():
        before = signal.signal(signal.SIGTERM, _on_sigterm)
    with job_console(cfg.output_dir, job, args.verbose):
        try:
            return fn(cfg)
        except SystemExit as exc:
            if not _TERMINATED:
                raise
            # a signal that lands inside a Ray call (ray.get) comes out as Ray's own SystemExit(1): the job still
            # ends as told, with its own code
            end = exc if isinstance(exc, Terminated) else Terminated()
            print(end.last_line, file=sys.stderr, flush=True)
            if end is exc:
                raise
            raise end from exc
        except Exception as exc:
            from toolformer.annotate.transient import is_transient

            if not is_transient(exc):
                raise
            end = SystemExit(EXIT_TRANSIENT)
            end.last_line = (f"stopped by an error a rerun would heal ({type(exc).__name__}: {str(exc)[:300]}); "  # type: ignore[attr-defined]
                             f"the same command resumes (exit {EXIT_TRANSIENT})")
            print(end.last_line, file=sys.stderr, flush=True)  # type: ignore[attr-defined]
            raise end from exc
        finally:
            if before is not None:  # a job run inside another program (a test, a notebook) leaves its handler as it was
                signal.signal(signal.SIGTERM, before)
