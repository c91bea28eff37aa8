"""The tool worker process's side (``worker.py`` is the parent's): build and set up one tool, then answer calls
over the socket pair until told to stop; die with the parent (PDEATHSIG, and a watcher of the parent pid)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Sequence

from toolformer.tools.base import Tool
from toolformer.tools.worker import FAULT_PREFIX, ToolSpec, rss_kb


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - the watcher thread below still ends an orphan
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _build(spec: ToolSpec) -> Tool:
    import importlib

    obj: Any = importlib.import_module(spec.module)
    for part in spec.cls.split("."):
        obj = getattr(obj, part)
    tool = obj(**spec.options)
    tool.setup()
    return tool


def worker_main(argv: Sequence[str] | None = None) -> None:
    """The worker process: build and set up the tool, then answer calls until told to stop or orphaned."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fd, parent_pid = int(argv[0]), int(argv[1])
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends its workers
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s tool worker %(process)d %(name)s: %(message)s")
    conn = Connection(fd)
    from toolformer.run.faults import tool_fault

    try:
        spec = conn.recv()
    except (EOFError, OSError):
        os._exit(0)
    t0 = time.perf_counter()
    try:
        tool = _build(spec)
        ready = ("ready", {"pid": os.getpid(), "setup_s": round(time.perf_counter() - t0, 3),
                           "rss_kb": rss_kb(os.getpid())})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops the run
        ready = ("setup_error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}")
    try:
        conn.send(ready)
    except (EOFError, OSError):
        os._exit(0)
    if ready[0] != "ready":
        os._exit(1)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] != "call":
            break
        _, key, requests, fault = msg
        try:
            for k in [k for k in os.environ if k.startswith(FAULT_PREFIX)]:
                del os.environ[k]
            os.environ.update(fault)
            tool_fault(tool.name, key)  # where the call really runs: a hang here is what the parent ends
            reply = ("ok", tool.call(requests))
        except Exception as exc:  # noqa: BLE001
            reply = ("error", f"{type(exc).__name__}: {str(exc)[:200]}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            break
    os._exit(0)
