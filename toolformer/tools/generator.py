"""Greedy batched generation with a small Hugging Face model, for tools that need a reader or a translator.

Causal LMs (the embedded SmolLM2 by default) are prompted few-shot and left-padded; seq2seq models (Marian,
M2M100, NLLB) take the text as it is. Held by a CPU worker, loaded once in ``setup``.
"""

from __future__ import annotations

from typing import Sequence

MAX_INPUT_TOKENS = 768


class Generator:
    def __init__(self, model: str = "embedded", dtype: str = "float32", batch_size: int = 8, threads: int | None = None):
        self.model_name, self.dtype, self.batch_size, self.threads = model, dtype, batch_size, threads
        self.model = self.tokenizer = None
        self.seq2seq = False

    def setup(self) -> "Generator":
        if self.model is not None:
            return self
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from toolformer.models import resolve_model

        if self.threads:
            torch.set_num_threads(self.threads)
        path = resolve_model(self.model_name)
        config = AutoConfig.from_pretrained(path)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = cls.from_pretrained(path, dtype=getattr(torch, self.dtype)).eval()
        if not self.seq2seq:
            # left: generation continues every row from its real end; a long prompt loses its start, not its question
            self.tokenizer.padding_side = self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        return self

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 24, stop: str | None = "\n",
                 **generate_kwargs) -> list[str]:
        """Greedy continuations (causal: without the prompt), cut at ``stop``."""
        import torch

        self.setup()
        out: list[str] = []
        for b in range(0, len(prompts), self.batch_size):
            batch = list(prompts[b : b + self.batch_size])
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                                 max_length=MAX_INPUT_TOKENS, add_special_tokens=self.seq2seq)
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
            if stop and not self.seq2seq:
                kwargs.update(stop_strings=[stop], tokenizer=self.tokenizer)
            kwargs.update(generate_kwargs)
            with torch.inference_mode():
                ids = self.model.generate(**enc, **kwargs)
            if not self.seq2seq:
                ids = ids[:, enc["input_ids"].shape[1] :]
            for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True):
                out.append(text.split(stop)[0] if stop else text)
        return out
