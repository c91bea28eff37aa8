"""What a job shows on the terminal, and where everything else goes.

A job's own output (what it does, progress with rates and time left, the funnel, where the files are) goes to
the terminal. Everything the engines and frameworks print (vLLM, Ray, DeepSpeed, transformers warnings, native
libraries writing to stderr) goes to ``<run>/logs/<job>.log``: file descriptors 1 and 2 are pointed at the log,
and ``sys.stdout`` at the terminal, so even C code and child processes cannot clutter it. ``--verbose`` (or
``TOOLFORMER_VERBOSE=1``) leaves everything on the terminal. A failure prints its last lines and the log's path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Iterator

_state: dict = {"quiet": False, "log": None}


def is_quiet() -> bool:
    return _state["quiet"]


def log_path() -> Path | None:
    return _state["log"]


@contextlib.contextmanager
def job_console(run_dir: str | os.PathLike | None, job: str, verbose: bool = False) -> Iterator[Path | None]:
    """Route framework output to ``<run_dir>/logs/<job>.log`` for the duration of a job (see the module doc)."""
    verbose = verbose or os.environ.get("TOOLFORMER_VERBOSE") == "1"
    if verbose or run_dir is None or "://" in str(run_dir) or _state["quiet"]:
        yield None
        return
    path = Path(run_dir) / "logs" / f"{job}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved_out, saved_err = os.dup(1), os.dup(2)
    old = sys.stdout, sys.stderr
    terminal = io.TextIOWrapper(os.fdopen(os.dup(saved_out), "wb", buffering=0), line_buffering=True,
                                encoding="utf-8", errors="replace")
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout = terminal
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(2), "wb", buffering=0), line_buffering=True, encoding="utf-8",
                                  errors="replace")
    # vLLM configures its own stdout handler unless told not to; its records then reach the root logger's file.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    _state.update(quiet=True, log=path)
    try:
        yield path
    except SystemExit as exc:
        if isinstance(exc.code, str):  # an expected stop: its message, not a traceback (which goes to the log)
            sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            sys.stderr.flush()
            terminal.write(f"stopped: {exc.code}\nfull log: {path}\n")
            raise SystemExit(1) from None
        if exc.code not in (0, None):  # an exit with its own code: the log's place, then the job's last word
            last = getattr(exc, "last_line", None)
            terminal.write(f"full log: {path}\n" + (f"{last}\n" if last else ""))
        raise
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            sys.stderr.write(text)
            sys.stderr.flush()
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            terminal.write("\n".join(["failed:", *lines[-6:], f"full log: {path}"]) + "\n")
        raise
    finally:
        sys.stderr.flush()
        terminal.flush()
        root.removeHandler(handler)
        logging.captureWarnings(False)
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        os.close(log_fd)
        sys.stdout, sys.stderr = old
        _state.update(quiet=False, log=None)


class Progress:
    """Progress on the terminal: a tqdm bar (rate, time left) on a TTY, else a line every ``every_s`` seconds."""

    def __init__(self, total: int | None, desc: str, unit: str = "texts", every_s: float = 30.0):
        import time

        from tqdm import tqdm

        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n, self.t0, self.last = 0, time.monotonic(), 0.0
        self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=sys.stdout, dynamic_ncols=True,
                        disable=not sys.stdout.isatty(), smoothing=0.1)

    def update(self, k: int = 1) -> None:
        import time

        self.n += k
        if not self.bar.disable:
            self.bar.update(k)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or (self.total and self.n >= self.total):
            self.last = now
            rate = self.n / max(1e-9, now - self.t0)
            left = f", {(self.total - self.n) / rate / 60:.1f} min left" if self.total and rate else ""
            print(f"  {self.desc}: {self.n}/{self.total or '?'} {self.unit} ({rate:.2f}/s{left})", flush=True)

    def close(self) -> None:
        self.bar.close()
