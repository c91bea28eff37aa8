"""An engine wrapper that counts the work asked of it: tokens prefilled and generated, per primitive.

Used by benchmarks and run reports to give tokens/s per stage without touching the engines themselves.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from contextlib import contextmanager

from toolformer.engine.base import Engine


class CountingEngine(Engine):
    def __init__(self, inner: Engine):
        # No super().__init__: the inner engine already holds the tokenizer and derived ids.
        self.inner = inner
        self.tokenizer, self.start_ids, self.doc_start = inner.tokenizer, inner.start_ids, inner.doc_start
        self.start_variants = inner.start_variants
        self.backend, self.dtype, self.model_path = inner.backend, inner.dtype, inner.model_path
        self.counts: Counter = Counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def _timed(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def start_probs(self, seqs, starts, top_k=None):
        self.counts["start_probs_requests"] += len(seqs)
        self.counts["start_probs_tokens"] += sum(map(len, seqs))
        with self._timed("start_probs"):
            return self.inner.start_probs(seqs, starts, top_k)

    def token_logprobs_after(self, prefixes, token_ids):
        self.counts["exact_start_requests"] += len(prefixes)
        with self._timed("exact_start"):
            return self.inner.token_logprobs_after(prefixes, token_ids)

    def sequence_logprobs(self, seqs, starts):
        self.counts["score_requests"] += len(seqs)
        self.counts["score_tokens"] += sum(map(len, seqs))
        with self._timed("score"):
            return self.inner.sequence_logprobs(seqs, starts)

    def sample(self, prompts, **kw):  # noqa: D102 - regex and the rest pass through
        with self._timed("sample"):
            out = self.inner.sample(prompts, **kw)
        self.counts["sample_requests"] += len(prompts)
        self.counts["sample_prompt_tokens"] += sum(map(len, prompts))
        self.counts["sampled_sequences"] += sum(len(o) for o in out)
        self.counts["sampled_tokens"] += sum(s.num_tokens for o in out for s in o)
        return out

    def describe(self) -> dict:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()
