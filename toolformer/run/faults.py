"""Fault injection for the recovery tests: failures that happen once per flag file, never in a real run.

A test sets ``TOOLFORMER_FAULT_ONCE_FILE=<path>`` and one of the points below; the first process to reach the
point creates the file and dies as a killed process would (no cleanup, no exception). Library code calls
``fault_point(name)`` at the few places a test needs, and nothing else of this module.

- ``TOOLFORMER_FAULT_KILL_STAGE=<stage>``: an annotate stage actor (select, sample, execute, score) dies on
  its first batch;
- ``TOOLFORMER_FAULT_TRAIN_CRASH_AT=<step>``: finetuning rank 0 dies one step after the checkpoint of that step;
- ``TOOLFORMER_FAULT_BOOTSTRAP_STOP=<round>/<step>`` (e.g. ``r2/merge``): the bootstrap job dies right after
  that step of that round is marked done.

Faults that fire every time (no flag file), for the chaos soak and the failure tests:

- ``TOOLFORMER_FAULT_POISON_SHARD=<shard_id>[,<shard_id>...]``: an LM stage actor (sample, score or lm; or the
  stage named by ``TOOLFORMER_FAULT_POISON_STAGE``) dies (exit 137, as the OOM killer does) on every batch that
  holds one of these shards: a poison batch;
- ``TOOLFORMER_FAULT_STALL_SHARD=<shard_id>[,...]``: an LM stage actor hangs on every batch that holds one of
  these shards (with ``TOOLFORMER_FAULT_STALL_ONCE_FILE`` also set: only the first time), for the LM watchdog;
- ``TOOLFORMER_FAULT_HANG_SETUP=<stage>``: that stage's actors hang in their set-up (an engine that never starts),
  for ``ray.lm_setup_timeout_s``;
- ``TOOLFORMER_FAULT_HANG_TOOL=<Tool>`` (optionally ``TOOLFORMER_FAULT_HANG_TEXT=<text_id>``): that tool's calls
  (of that text only) hang, for the per-call tool timeout;
- ``TOOLFORMER_FAULT_DEAD_ENGINE_AFTER=<n>``: an engine answers its first ``n`` calls, then raises ``EngineDeadError`` on
  every call, as vLLM does once its engine core died (a CUDA error, a GPU OOM) while the actor lives on; with
  ``TOOLFORMER_FAULT_DEAD_ENGINE_ONCE_FILE`` only the first engine to get there dies (its replacement is healthy);
- ``TOOLFORMER_FAULT_PASS_TRANSIENT=<n>``: the first ``n`` annotate passes of a driver end at their start with a
  transient error (a connection reset, as a store or Ray RPC gives), which must cost an idle pass, not the run;
- ``TOOLFORMER_FAULT_GIL_TOOL=<Tool>`` (optionally ``TOOLFORMER_FAULT_GIL_TEXT=<text_id>``): that tool's calls
  compute a huge power in C while holding the GIL (a thread in their process cannot end or outwait them).
"""

from __future__ import annotations

import os
import sys
import time

LM_STAGES = ("sample", "score", "lm")
HANG_SECONDS = 24 * 3600  # "forever" for any test: only a timeout or a kill ends it


def _listed(var: str, value: str | None) -> bool:
    names = os.environ.get(var)
    return bool(names) and value is not None and value in names.split(",")


def fire_once(flag: str | None, message: str) -> bool:
    """True for the first caller that creates ``flag`` (atomically, across processes); False after, or when unset."""
    if not flag:
        return False
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{message} (pid {os.getpid()})\n".encode())
    os.close(fd)
    return True


def batch_fault(stage: str, shard_ids: list[str]) -> None:
    """A stage actor is about to compute a batch holding these shards: die or hang here if a test asked."""
    env = os.environ
    poison_stages = env.get("TOOLFORMER_FAULT_POISON_STAGE", ",".join(LM_STAGES)).split(",")
    if stage in poison_stages and any(_listed("TOOLFORMER_FAULT_POISON_SHARD", s) for s in shard_ids):
        print(f"fault injection: a poison batch ({shard_ids}) ends the {stage} actor, exit 137", file=sys.stderr,
              flush=True)
        os._exit(137)
    if stage in LM_STAGES and any(_listed("TOOLFORMER_FAULT_STALL_SHARD", s) for s in shard_ids):
        once = env.get("TOOLFORMER_FAULT_STALL_ONCE_FILE")
        if not once or fire_once(once, f"stalled in stage {stage}"):
            time.sleep(HANG_SECONDS)


def setup_fault(stage: str) -> None:
    """A stage actor is about to set up: hang here if a test asked (an engine start that never returns)."""
    if os.environ.get("TOOLFORMER_FAULT_HANG_SETUP") == stage:
        print(f"fault injection: the {stage} actor hangs in its set-up", file=sys.stderr, flush=True)
        time.sleep(HANG_SECONDS)


def tool_fault(tool: str, text_id: str | None) -> None:
    """A tool call is about to run: hang here, or compute in C holding the GIL, if a test asked."""
    env = os.environ
    if env.get("TOOLFORMER_FAULT_HANG_TOOL") == tool and env.get("TOOLFORMER_FAULT_HANG_TEXT") in (None, "", text_id):
        time.sleep(HANG_SECONDS)
    if env.get("TOOLFORMER_FAULT_GIL_TOOL") == tool and env.get("TOOLFORMER_FAULT_GIL_TEXT") in (None, "", text_id):
        print(f"fault injection: a {tool} call computes 7 ** 10 ** 9 in C, holding the GIL", file=sys.stderr,
              flush=True)
        _ = 7 ** 10 ** 9  # one bytecode: no other thread of this process runs until it ends (minutes)


def fault_point(point: str, *, stage: str | None = None, step: int | str | None = None, rank: int | None = None) -> None:
    """Die here once if a test asked for it (see the module docstring); a no-op otherwise."""
    env = os.environ
    if point == "bootstrap_step" and env.get("TOOLFORMER_FAULT_BOOTSTRAP_STOP") == step:
        hit, code = fire_once(env.get("TOOLFORMER_FAULT_ONCE_FILE"), f"stopped after {step}"), 1
    elif point == "stage" and env.get("TOOLFORMER_FAULT_KILL_STAGE") == stage:
        hit = fire_once(env.get("TOOLFORMER_FAULT_ONCE_FILE"), f"killed in stage {stage}")
        code = 137
    elif point == "train_step" and env.get("TOOLFORMER_FAULT_TRAIN_CRASH_AT") and rank == 0 and step is not None:
        # one step after the checkpoint: the controller registers a reported checkpoint asynchronously, and a
        # crash in the same instant could lose it, as a real crash could
        hit = int(env["TOOLFORMER_FAULT_TRAIN_CRASH_AT"]) + 1 == step and fire_once(
            env.get("TOOLFORMER_FAULT_ONCE_FILE"), f"crashed at step {step}")
        code = 1
    else:
        return
    if hit:
        os._exit(code)


class EngineDeadError(RuntimeError):
    """What the dying engine raises: named as vLLM's (``toolformer.engine.base.engine_is_dead`` matches by name)."""


_ENGINE_CALLS = ("start_probs", "token_logprobs_after", "sequence_logprobs", "sample", "greedy")


class _DyingEngine:
    """An engine that answers ``after`` calls, then raises ``EngineDead`` on every one (the fault above)."""

    def __init__(self, engine, after: int, once: str | None):
        self._engine, self._left, self._once, self._dead = engine, after, once, False

    def __getattr__(self, name):
        attr = getattr(self._engine, name)
        if name not in _ENGINE_CALLS:
            return attr

        def call(*args, **kwargs):
            if not self._dead and self._left <= 0 and (not self._once or fire_once(self._once, "engine died")):
                self._dead = True
                print(f"fault injection: the engine of pid {os.getpid()} is dead from now on", file=sys.stderr,
                      flush=True)
            if self._dead:  # vLLM's own class name, which engine_is_dead recognises (no engine import here)
                raise EngineDeadError("fault injection: the engine core died")
            self._left -= 1
            return attr(*args, **kwargs)

        return call


def dead_engine_fault(engine):
    """The engine as built, or one that dies after some calls when a test asked (``TOOLFORMER_FAULT_DEAD_ENGINE_AFTER``)."""
    after = os.environ.get("TOOLFORMER_FAULT_DEAD_ENGINE_AFTER")
    if not after:
        return engine
    return _DyingEngine(engine, int(after), os.environ.get("TOOLFORMER_FAULT_DEAD_ENGINE_ONCE_FILE") or None)


_passes_failed = 0


def pass_fault() -> None:
    """An annotate pass starts: raise a transient error here for the first passes a test asked for."""
    global _passes_failed
    n = int(os.environ.get("TOOLFORMER_FAULT_PASS_TRANSIENT") or 0)
    if _passes_failed < n:
        _passes_failed += 1
        raise ConnectionResetError(104, f"fault injection: a transient error ends pass start {_passes_failed} of {n}")
