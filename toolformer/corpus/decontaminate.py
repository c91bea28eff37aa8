"""Decontamination: a corpus document that shares a word n-gram with an evaluation input is not trained on.

    check = Decontaminator.for_corpus(cfg.corpus)       # None when corpus.decontaminate is empty
    check("Question: Jack had 12 apples ...")            # True: skip it, counted as `contaminated`

Words are lower-cased runs of letters and digits (``1,200`` is two words, as in the inputs), so case,
punctuation and spacing do not hide a copy. An input shorter than n words is matched whole. The n-grams are
held as 64-bit hashes: ~1 M of them for every evaluation set here, so each reader process holds its own.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Iterable, Sequence

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def _key(gram: Sequence[str]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest(), "little")


class Decontaminator:
    """Whether a text shares an n-gram (n words) with any of the given evaluation inputs."""

    def __init__(self, inputs: Iterable[str], n: int = 8):
        if n < 1:
            raise ValueError(f"corpus.decontaminate_n must be at least 1, got {n}")
        self.n = n
        self.grams: set[int] = set()
        self.lengths = {n}  # short inputs add their own length
        self.n_inputs = 0
        for text in inputs:
            w = words(text)
            if not w:
                continue
            self.n_inputs += 1
            size = min(n, len(w))
            self.lengths.add(size)
            self.grams.update(_key(w[i : i + size]) for i in range(len(w) - size + 1))

    def __call__(self, text: str) -> bool:
        w = words(text)
        return any(_key(w[i : i + size]) in self.grams for size in self.lengths for i in range(len(w) - size + 1))

    @classmethod
    def for_tasks(cls, tasks: Sequence[str], n: int = 8, data_dir: str | Path | None = None,
                  task_paths: dict[str, str] | None = None,
                  task_ids: dict[str, str] | None = None) -> "Decontaminator":
        """From every input of the named evaluation tasks (all of them, not the evaluated sample; with
        ``task_ids`` a task's listed items only, e.g. a held-out fold)."""
        from toolformer.tasksets import load_task
        from toolformer.paths import shared_data

        data = shared_data(data_dir)
        inputs = [e.prompt for t in tasks
                  for e in load_task(t, data, path=(task_paths or {}).get(t), ids=(task_ids or {}).get(t))]
        return cls(inputs, n)

    @staticmethod
    def for_corpus(corpus) -> "Decontaminator | None":
        """The check a ``CorpusConfig`` asks for."""
        return check_for(corpus.decontaminate, corpus.decontaminate_n, corpus.decontaminate_data,
                         corpus.decontaminate_paths, getattr(corpus, "decontaminate_ids", None))


def check_for(tasks: Sequence[str] | None, n: int = 8, data_dir: str | None = None,
              paths: dict[str, str] | None = None, ids: dict[str, str] | None = None) -> Decontaminator | None:
    """The check against ``tasks`` (None when there are none), built once per process: every reader of a run
    (the one-loop prepare, the Ray prepare's tasks, the local runner) asks with the same settings."""
    if not tasks:
        return None
    return _cached(tuple(tasks), n, data_dir, tuple(sorted((paths or {}).items())),
                   tuple(sorted((ids or {}).items())))


@functools.lru_cache(maxsize=8)
def _cached(tasks: tuple, n: int, data_dir: str | None, paths: tuple, ids: tuple = ()) -> Decontaminator:
    return Decontaminator.for_tasks(list(tasks), n, data_dir, dict(paths), dict(ids))


def derive_decontamination(cfg, tasks: Sequence[str]) -> list[str]:
    """Decontaminate ``cfg``'s corpus against every task the run will evaluate, read from where the evaluation
    will read it: ``eval.task_paths`` and ``eval.task_ids`` (command-line overrides included) become the check's
    paths and ids, so pointing the evaluation at another file moves the check with it. ``corpus.decontaminate``
    can only add tasks: the result is its tasks plus ``tasks``. Returns the tasks added; changes ``cfg`` in place."""
    c, e = cfg.corpus, cfg.eval
    have = list(c.decontaminate or [])
    added = [t for t in tasks if t not in have]
    c.decontaminate = have + added
    paths, ids = dict(c.decontaminate_paths or {}), dict(getattr(c, "decontaminate_ids", None) or {})
    for t in tasks:
        if t in (e.task_paths or {}):
            paths[t] = e.task_paths[t]  # the file the evaluation reads, whatever the corpus section said
        else:
            paths.pop(t, None)  # the evaluation reads the shipped file: so does the check
        if t in (e.task_ids or {}):
            ids[t] = e.task_ids[t]
        elif t in ids:
            del ids[t]  # the evaluation reads the whole task: so does the check
    c.decontaminate_paths, c.decontaminate_ids = paths, ids
    if e.data_dir and not c.decontaminate_data:
        c.decontaminate_data = e.data_dir
    return added


def contaminated_by_task(texts: Sequence[str], tasks: Sequence[str], n: int = 8, data_dir: str | None = None,
                         paths: dict[str, str] | None = None, ids: dict[str, str] | None = None) -> dict[str, int]:
    """Per task, how many of ``texts`` share an n-gram with its inputs (a text may count for several)."""
    out = {}
    for t in tasks:
        check = check_for([t], n, data_dir, {t: paths[t]} if paths and t in paths else None,
                          {t: ids[t]} if ids and t in ids else None)
        out[t] = sum(bool(check(x)) for x in texts)
    return out
