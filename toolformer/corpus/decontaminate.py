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
                  task_paths: dict[str, str] | None = None) -> "Decontaminator":
        """From every input of the named evaluation tasks (all of them, not the evaluated sample)."""
        from toolformer.evaluation.tasks import load_task
        from toolformer.paths import shared_data

        data = shared_data(data_dir)
        inputs = [e.prompt for t in tasks for e in load_task(t, data, path=(task_paths or {}).get(t))]
        return cls(inputs, n)

    @staticmethod
    def for_corpus(corpus) -> "Decontaminator | None":
        """The check a ``CorpusConfig`` asks for."""
        return check_for(corpus.decontaminate, corpus.decontaminate_n, corpus.decontaminate_data,
                         corpus.decontaminate_paths)


def check_for(tasks: Sequence[str] | None, n: int = 8, data_dir: str | None = None,
              paths: dict[str, str] | None = None) -> Decontaminator | None:
    """The check against ``tasks`` (None when there are none), built once per process: every reader of a run
    (the one-loop prepare, the Ray prepare's tasks, the local runner) asks with the same settings."""
    if not tasks:
        return None
    return _cached(tuple(tasks), n, data_dir, tuple(sorted((paths or {}).items())))


@functools.lru_cache(maxsize=4)
def _cached(tasks: tuple, n: int, data_dir: str | None, paths: tuple) -> Decontaminator:
    return Decontaminator.for_tasks(list(tasks), n, data_dir, dict(paths))
