"""The transformers engine: the reference implementation (and the training side's model).

Exact by construction: every probability comes from a full softmax over the vocabulary. Batches are
right-padded (so positions and causal masks are those of one sequence alone) and grouped by length
under a token budget.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from toolformer.engine.base import Engine, Greedy, Sample, StartProbs

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFEngine(Engine):
    backend = "hf"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        device: str | None = None,
        max_batch_tokens: int = 8192,
        threads: int | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model_path, self.dtype = model_path, dtype
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        super().__init__(AutoTokenizer.from_pretrained(model_path))
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[dtype]).to(self.device)
        self.model.eval()
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # -- batched forward ---------------------------------------------------------------------------------
    def _batches(self, seqs: Sequence[Sequence[int]]):
        order = sorted(range(len(seqs)), key=lambda b: -len(seqs[b]))
        batch: list[int] = []
        for b in order:
            width = len(seqs[batch[0]]) if batch else len(seqs[b])
            if batch and width * (len(batch) + 1) > self.max_batch_tokens:
                yield batch
                batch = []
            batch.append(b)
        if batch:
            yield batch

    @torch.inference_mode()
    def _log_softmax(self, seqs: Sequence[Sequence[int]]):
        """Yield (index, log-probs [len, vocab] as float32, on the engine's device) for every sequence; callers
        pick the few values they need there, so a GPU never copies a vocabulary-wide tensor to the host."""
        for batch in self._batches(seqs):
            width = max(len(seqs[b]) for b in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, b in enumerate(batch):
                ids[row, : len(seqs[b])] = torch.tensor(list(seqs[b]), dtype=torch.long)
                mask[row, : len(seqs[b])] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, b in enumerate(batch):
                yield b, logprobs[row, : len(seqs[b])]

    # -- interface ---------------------------------------------------------------------------------------
    def start_probs(self, seqs, starts, top_k=None):
        out: list[StartProbs | None] = [None] * len(seqs)
        ids = torch.tensor(self.start_ids, device=self.device)
        for b, logprobs in self._log_softmax(seqs):
            # The distribution predicting seq[j] sits at row j-1.
            rows = logprobs[starts[b] - 1 : len(seqs[b]) - 1]
            p = rows[:, ids].exp().sum(-1).double().cpu().numpy()
            out[b] = StartProbs(p, p.copy())
        return out  # type: ignore[return-value]

    def token_logprobs_after(self, prefixes, token_ids):
        out = np.zeros((len(prefixes), len(token_ids)), dtype=np.float64)
        ids = torch.tensor(list(token_ids), device=self.device)
        for b, logprobs in self._log_softmax(prefixes):
            out[b] = logprobs[-1, ids].double().cpu().numpy()
        return out

    def sequence_logprobs(self, seqs, starts):
        out: list[np.ndarray | None] = [None] * len(seqs)
        for b, logprobs in self._log_softmax(seqs):
            target = torch.tensor(list(seqs[b][starts[b] :]), dtype=torch.long, device=self.device)
            rows = logprobs[starts[b] - 1 : len(seqs[b]) - 1]
            out[b] = rows.gather(1, target[:, None])[:, 0].double().cpu().numpy()
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def greedy(self, prompts, *, max_tokens, top_k=1, stop=(), banned_ids=()):
        """The reference: one prompt at a time, a KV-cached step loop reading the top k at every step."""
        eos = self.tokenizer.eos_token_id
        out = []
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], device=self.device)
            past, token_ids, tops, stopped = None, [], [], None
            for _ in range(max_tokens):
                res = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[0, -1].float()
                if banned_ids:
                    logits[list(banned_ids)] = float("-inf")
                top = torch.topk(logits, max(1, top_k)).indices.tolist()
                token = top[0]
                if token == eos:
                    break
                token_ids.append(token)
                tops.append(top)
                text = self.tokenizer.decode(token_ids)
                hit = next((s for s in stop if s in text), None)
                if hit:
                    stopped = hit
                    break
                ids = torch.tensor([[token]], device=self.device)
            text = self.tokenizer.decode(token_ids)
            if stopped:
                text = text[: text.index(stopped) + len(stopped)]
            out.append(Greedy(token_ids, text, tops, stopped))
        return out

    def _grammar(self, regex: str):
        """The regex compiled by xgrammar for this tokenizer (cached): the constraint vLLM applies, here as a
        transformers logits processor."""
        cache = self.__dict__.setdefault("_grammars", {})
        if regex not in cache:
            import xgrammar as xgr

            if "_xgr_compiler" not in self.__dict__:
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
                self._xgr_compiler = xgr.GrammarCompiler(info)
            cache[regex] = self._xgr_compiler.compile_regex(regex)
        return cache[regex]

    @torch.inference_mode()
    def sample(self, prompts, *, n, max_tokens, stop, temperature, seeds, regex=None):
        # One prompt at a time with n sequences in a batch: a KV-cached generate, as a competent first
        # version would write it. vLLM's engine is the fast path.
        from toolformer.engine.base import regex_per_prompt

        results = []
        for prompt, seed, rx in zip(prompts, seeds, regex_per_prompt(regex, len(prompts))):
            torch.manual_seed(seed)
            ids = torch.tensor([list(prompt)], device=self.device)
            processors = None
            if rx:
                from xgrammar.contrib.hf import LogitsProcessor

                processors = [LogitsProcessor(self._grammar(rx))]  # one per generate() call
            gen = self.model.generate(
                logits_processor=processors,
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=0,
                top_p=1.0,
                num_return_sequences=n,
                max_new_tokens=max_tokens,
                stop_strings=[stop],
                tokenizer=self.tokenizer,
                pad_token_id=self.pad_id,
            )
            samples = []
            for row in gen[:, ids.shape[1] :].tolist():
                eos = self.tokenizer.eos_token_id
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                cut = text.find(stop)
                samples.append(Sample(text[:cut] if cut >= 0 else text, cut >= 0, len(row)))
            results.append(samples)
        return results
