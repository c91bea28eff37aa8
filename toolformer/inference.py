"""Tool-using decoding (DESIGN §1.6), batched across inputs on any engine with ``greedy``.

Greedy decoding; a call starts wherever ``[`` (or `` [``) is among the ``top_k`` most likely next tokens (k =
10 by default, k = 1 is plain greedy). The call is then decoded greedily until ``->`` (or ``]``), the tool runs,
``result]`` is appended and decoding goes on. At most ``max_calls`` calls per input. ``disabled`` is the
paper's "Toolformer (disabled)": the start-of-call tokens get probability 0.

Each round sends every input in the same phase to the engine in one batch. Greedy text is generated ahead
with the top-k ids of every step; the first step whose top-k holds a start token is where the call begins
(what was generated past it is dropped): the same tokens a step-by-step loop would produce, in one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from toolformer.calls import CALL_WITH_RESULT_PATTERN, Call, linearize, parse_call
from toolformer.engine import Engine
from toolformer.tools import ToolRequest, tool_class


@dataclass
class DecodeConfig:
    max_new_tokens: int = 40  # tokens the model writes (a call and its result do not count)
    top_k: int = 10  # a call starts when a start-of-call token is among the k most likely next tokens
    max_calls: int = 1
    disabled: bool = False
    max_call_tokens: int = 32
    stop: list[str] = field(default_factory=list)  # e.g. ["\n"] for short answers


@dataclass
class Decoded:
    text: str  # the continuation, with any call and its result inline
    calls: list[dict]  # tool, input, result (None when it failed), ok

    @property
    def answer_text(self) -> str:
        """What the model said, calls taken out (what the lenient scorers read)."""
        return " ".join(CALL_WITH_RESULT_PATTERN.sub(" ", self.text).split())


@dataclass
class _State:
    ids: list[int]
    n_prompt: int
    tools: tuple[str, ...]
    context: dict
    budget: int
    calls: list[dict] = field(default_factory=list)
    phase: str = "text"  # text | call | done
    before_call: int = 0  # len(ids) where the current call began
    start_text: str = "["


TOOL_BATCH = 16  # calls of one tool sent together in a decoding round


class ToolDecoder:
    def __init__(self, engine: Engine, tools: Mapping[str, object], cfg: DecodeConfig | None = None):
        self.engine, self.tools, self.cfg = engine, dict(tools), cfg or DecodeConfig()
        self.start_ids = set(engine.start_ids)
        self.start_text = {i: t for t, i in engine.start_variants.items()}

    def __call__(self, prompts: Sequence[str], allowed: Sequence[Sequence[str]] | None = None,
                 contexts: Sequence[dict] | None = None) -> list[Decoded]:
        cfg = self.cfg
        states = []
        for i, prompt in enumerate(prompts):
            ids = self.engine.encode(prompt)
            tools = tuple(t for t in (allowed[i] if allowed is not None else self.tools) if t in self.tools)
            states.append(_State(ids, len(ids), tools, (contexts[i] if contexts else None) or {}, cfg.max_new_tokens))
        while True:
            text = [s for s in states if s.phase == "text"]
            call = [s for s in states if s.phase == "call"]
            if not text and not call:
                break
            if text:
                self._text_round(text)
            if call:
                self._call_round(call)
        return [Decoded(self.engine.tokenizer.decode(s.ids[s.n_prompt :], skip_special_tokens=True), s.calls) for s in states]

    def _run_tools(self, states: list[_State], calls: list) -> list[str | None]:
        """Each parsed call's result: the calls of one tool go to it together, ``TOOL_BATCH`` at a time (a QA model
        answers a batch in about the time of one question; each batch stays within the tool's deadline). A tool
        catches and logs what it raises: a failure costs the call, never the decoding."""
        results: list[str | None] = [None] * len(calls)
        by_tool: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            if call is not None:
                by_tool.setdefault(call.tool, []).append(i)
        for tool, idx in by_tool.items():
            for k in range(0, len(idx), TOOL_BATCH):
                part = idx[k : k + TOOL_BATCH]
                got = self.tools[tool]([ToolRequest(calls[i].input, states[i].context) for i in part])
                for i, r in zip(part, got):
                    results[i] = r
        return results

    def _can_call(self, s: _State) -> bool:
        return not self.cfg.disabled and len(s.calls) < self.cfg.max_calls and bool(s.tools)

    def _text_round(self, states: list[_State]) -> None:
        live = [s for s in states if s.budget > 0]
        for s in states:
            if s.budget <= 0:
                s.phase = "done"
        if not live:
            return
        k = max(1, self.cfg.top_k)
        outs = self.engine.greedy(
            [s.ids for s in live], max_tokens=max(s.budget for s in live), top_k=k, stop=self.cfg.stop,
            banned_ids=sorted(self.start_ids) if self.cfg.disabled else (),
        )
        for s, out in zip(live, outs):
            tokens, tops = out.token_ids[: s.budget], out.top_ids[: s.budget]
            trigger = None
            if self._can_call(s):
                trigger = next((j for j, top in enumerate(tops) if self.start_ids & set(top[:k])), None)
            if trigger is None:
                s.ids += tokens
                s.budget -= len(tokens)
                s.phase = "done"
                continue
            # the most likely start variant at that step
            start = next(t for t in tops[trigger][:k] if t in self.start_ids)
            s.ids += tokens[:trigger]
            s.budget -= trigger
            s.before_call = len(s.ids)
            s.start_text = self.start_text.get(start, "[")
            s.ids.append(start)
            s.phase = "call"

    def _call_round(self, states: list[_State]) -> None:
        outs = self.engine.greedy([s.ids for s in states], max_tokens=self.cfg.max_call_tokens, top_k=1,
                                  stop=["->", "→", "]"])
        writes, calls = [], []
        for s, out in zip(states, outs):
            written = "[" + out.text
            writes.append(written)
            calls.append(parse_call(written + ("]" if not written.endswith("]") else ""), s.tools)
                         if out.stopped_by else None)
        results = self._run_tools(states, calls)
        for s, written, call, result in zip(states, writes, calls, results):
            record = {"tool": call.tool if call else None, "input": call.input if call else None,
                      "written": written, "result": result, "ok": bool(result)}
            s.calls.append(record)
            if result:
                quote = tool_class(call.tool).quote_input
                segment = s.start_text + linearize(Call(call.tool, call.input, result), quote_input=quote)[1:]
                s.ids = s.ids[: s.before_call] + self.engine.encode(segment)
            else:
                s.ids = s.ids[: s.before_call]  # a call that did not work leaves no trace in the text
            s.phase = "text"
