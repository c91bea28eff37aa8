"""The LM engine interface: exactly what the annotation method needs from a language model.

Four primitives, each over a batch:
- ``start_probs``: for every position of a prompt, the probability that the next token starts a call
  (a lower and an upper bound; equal where the engine knows it exactly);
- ``token_logprobs_after``: exact log-probabilities of given tokens after each given prefix;
- ``sequence_logprobs``: log p(seq[j] | seq[:j]) for the tail of each sequence (scoring);
- ``sample``: m continuations per prompt, stopping at a stop string.
Token ids in, numbers out: the caller concatenates ids and never re-tokenizes, so a text's tokens are
identical in every variant that is compared.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from toolformer.calls import start_token_ids


@dataclass
class StartProbs:
    """p(start of call) at positions ``start..len(seq)-1``; ``lower == upper`` where exact."""

    lower: np.ndarray
    upper: np.ndarray

    @property
    def exact(self) -> np.ndarray:
        return self.lower == self.upper


@dataclass
class Sample:
    text: str  # continuation, without the stop string
    closed: bool  # ended on the stop string (not on the token limit)
    num_tokens: int


@dataclass
class Greedy:
    """A greedy continuation: its token ids, text, the top-k token ids at every step, and why it stopped."""

    token_ids: list[int]
    text: str
    top_ids: list[list[int]]  # the k most likely next tokens at each generated step (the chosen one first)
    stopped_by: str | None  # the stop string that ended it, or None (length / end of text)


class EngineDead(RuntimeError):
    """The engine can no longer compute (its core process died): every later call would fail too."""


# vLLM's names for an engine whose core process is gone (vllm.v1.engine.exceptions); matched by name so that the
# check needs no vLLM import (the transformers engine has no such state).
DEAD_ENGINE_ERRORS = ("EngineDeadError", "EngineDead")


def engine_is_dead(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says the engine itself is dead, not this batch's input."""
    seen = 0
    while exc is not None and seen < 8:
        if type(exc).__name__ in DEAD_ENGINE_ERRORS:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def probe(engine) -> BaseException | None:
    """One greedy token of a fixed prompt: None when the engine answers, else what it raised."""
    try:
        engine.greedy([list(engine.doc_start) + engine.encode("The")], max_tokens=1, top_k=1)
        return None
    except Exception as exc:  # noqa: BLE001 - whatever it raises says it cannot compute
        return exc


def doc_start_ids(tokenizer) -> list[int]:
    """What a document starts with in pretraining: the BOS the tokenizer adds, else ``<|endoftext|>``.

    Scoring contexts begin with it so that the first token of a text has a context, and a prefixed call
    and the empty prefix are compared on equal terms.
    """
    added = tokenizer("", add_special_tokens=True).input_ids
    if added:
        return list(added)
    vocab = tokenizer.get_vocab()
    for name in ("<|endoftext|>", "</s>", "<s>"):
        if name in vocab:
            return [vocab[name]]
    if tokenizer.eos_token_id is not None:
        return [tokenizer.eos_token_id]
    raise ValueError("tokenizer has no BOS, <|endoftext|> or EOS token to start a document with")


class Engine(abc.ABC):
    """One model, one dtype. A run's filtering decisions come from one engine instance's numbers."""

    backend: str
    dtype: str
    model_path: str

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.start_ids: list[int] = start_token_ids(tokenizer)
        # "[" and " [" → their ids (a tokenizer may lack one of them)
        self.start_variants: dict[str, int] = {
            tokenizer.decode([i], clean_up_tokenization_spaces=False): i for i in self.start_ids
        }
        self.doc_start: list[int] = doc_start_ids(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc.input_ids), [tuple(o) for o in enc.offset_mapping]

    @abc.abstractmethod
    def start_probs(
        self, seqs: Sequence[Sequence[int]], starts: Sequence[int], top_k: int | None = None
    ) -> list[StartProbs]:
        """Start-of-call probability before each token ``seq[j]`` for ``j >= start`` (given ``seq[:j]``).

        Engines may return bounds (``lower < upper``) from the ``top_k`` most likely tokens where exact
        values would cost more; ``annotate.positions`` asks ``token_logprobs_after`` for the few that matter.
        """

    @abc.abstractmethod
    def token_logprobs_after(self, prefixes: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        """Exact log p(token_ids[t] | prefixes[b]), shape [len(prefixes), len(token_ids)]."""

    @abc.abstractmethod
    def sequence_logprobs(self, seqs: Sequence[Sequence[int]], starts: Sequence[int]) -> list[np.ndarray]:
        """log p(seq[j] | seq[:j]) for ``j`` in ``start..len(seq)-1`` (``start >= 1``)."""

    @abc.abstractmethod
    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int,
        max_tokens: int,
        stop: str,
        temperature: float,
        seeds: Sequence[int],
        regex: str | Sequence[str | None] | None = None,
    ) -> list[list[Sample]]:
        """``n`` sampled continuations per prompt, each ending at ``stop`` or after ``max_tokens``; with ``regex``
        (one for all prompts, or one per prompt), every continuation is constrained to match it (structured
        generation)."""

    def greedy(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: int,
        top_k: int = 1,
        stop: Sequence[str] = (),
        banned_ids: Sequence[int] = (),
    ) -> list[Greedy]:
        """Greedy continuations with the top ``top_k`` token ids per step; ``banned_ids`` get probability 0."""
        raise NotImplementedError(f"{type(self).__name__} does not decode greedily")

    def close(self) -> None:
        """Release the model (vLLM's engine core must be shut down explicitly)."""

    def describe(self) -> dict:
        """Recorded in a run's metadata: which numbers made the filtering decisions."""
        return {"backend": self.backend, "dtype": self.dtype, "model": self.model_path}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def regex_per_prompt(regex: str | Sequence[str | None] | None, n_prompts: int) -> list[str | None]:
    """``Engine.sample``'s ``regex`` as one entry per prompt."""
    if regex is None or isinstance(regex, str):
        return [regex] * n_prompts
    regexes = list(regex)
    if len(regexes) != n_prompts:
        raise ValueError(f"{len(regexes)} regexes for {n_prompts} prompts")
    return regexes
