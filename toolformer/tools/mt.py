"""MT: translate a phrase into English (the paper: NLLB-600M with fastText language id).

Language id is py3langid (a packaged model, no download). Translation is a seq2seq model from a local path
(Marian, M2M100 or NLLB through transformers: the production path) or, as the embedded default, the
instruct LM prompted few-shot. English input, or input without letters, returns nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from toolformer.tools.base import Selection, Tool, ToolRequest, register
from toolformer.tools.generator import Generator
from toolformer.tools.heuristics import foreign_chunk
from toolformer.tools.langid import identify

LANG_NAMES = {"fr": "French", "es": "Spanish", "de": "German", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
              "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ar": "Arabic", "hi": "Hindi", "vi": "Vietnamese",
              "el": "Greek", "tr": "Turkish", "pl": "Polish", "sv": "Swedish", "la": "Latin", "ko": "Korean"}
# ISO 639-1 → NLLB (FLORES-200) codes for the languages above.
NLLB_CODES = {"fr": "fra_Latn", "es": "spa_Latn", "de": "deu_Latn", "it": "ita_Latn", "pt": "por_Latn",
              "nl": "nld_Latn", "ru": "rus_Cyrl", "zh": "zho_Hans", "ja": "jpn_Jpan", "ar": "arb_Arab",
              "hi": "hin_Deva", "vi": "vie_Latn", "el": "ell_Grek", "tr": "tur_Latn", "pl": "pol_Latn",
              "sv": "swe_Latn", "ko": "kor_Hang", "en": "eng_Latn"}

PROMPT = """Translate into English.

French: Je voudrais un café, s'il vous plaît.
English: I would like a coffee, please.

Spanish: La biblioteca cierra a las ocho.
English: The library closes at eight.

German: Wir haben das Spiel gestern gewonnen.
English: We won the game yesterday.

{lang}: {text}
English:"""

MAX_INPUT_CHARS = 500


@dataclass
class MTOptions:
    translator: str = "embedded"  # an HF seq2seq (NLLB, M2M100, Marian) or causal model; embedded: SmolLM2 prompted
    min_confidence: float = 0.5  # text language-identified as English at least this surely is left alone
    max_new_tokens: int = 32
    batch_size: int = 8


@register
class MT(Tool):
    name = "MT"
    quote_input = True
    Options = MTOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.translator = Generator(self.options.translator, batch_size=self.options.batch_size)
        self.min_confidence, self.max_new_tokens = self.options.min_confidence, self.options.max_new_tokens

    @classmethod
    def select(cls, text, corpus_cfg, seed: int = 0) -> Selection:
        """A non-English chunk (~10 words, language id > 0.8) with English before and after it."""
        lang = foreign_chunk(text.text)
        return Selection(lang is not None, f"non_english_{lang}" if lang else "no_foreign_chunk")

    def setup(self) -> None:
        self.translator.setup()

    def run_batch(self, requests: Sequence[ToolRequest]) -> list[str | None]:
        self.setup()
        todo: list[tuple[int, str, str]] = []
        for b, r in enumerate(requests):
            text = (r.input or "").strip()
            if not text or len(text) > MAX_INPUT_CHARS:
                continue
            lang, prob = identify(text)
            # Translate unless it is (confidently) English already: short phrases get low confidence.
            if lang and not (lang == "en" and prob >= self.min_confidence):
                todo.append((b, lang, text))
        out: list[str | None] = [None] * len(requests)
        if not todo:
            return out
        if self.translator.seq2seq:
            translations = self._seq2seq(todo)
        else:
            prompts = [PROMPT.format(lang=LANG_NAMES.get(lang, "Text"), text=text) for _, lang, text in todo]
            translations = self.translator.generate(prompts, self.max_new_tokens)
        for (b, _, text), t in zip(todo, translations):
            t = (t or "").strip().strip("\"'“”").strip()
            out[b] = t if t and t.lower() != text.lower() else None
        return out

    def _seq2seq(self, todo: list[tuple[int, str, str]]) -> list[str]:
        tok = self.translator.tokenizer
        kind = type(tok).__name__.lower()
        results: list[str] = []
        # NLLB and M2M100 need the source language set and the target forced; Marian is one pair per model.
        by_lang: dict[str, list[int]] = {}
        for i, (_, lang, _) in enumerate(todo):
            by_lang.setdefault(lang, []).append(i)
        results = [""] * len(todo)
        for lang, idx in by_lang.items():
            kwargs = {}
            if "nllb" in kind:
                tok.src_lang = NLLB_CODES.get(lang, "eng_Latn")
                kwargs["forced_bos_token_id"] = tok.convert_tokens_to_ids("eng_Latn")
            elif "m2m" in kind:
                tok.src_lang = lang
                kwargs["forced_bos_token_id"] = tok.get_lang_id("en")
            texts = [todo[i][2] for i in idx]
            for i, t in zip(idx, self.translator.generate(texts, self.max_new_tokens, stop=None, **kwargs)):
                results[i] = t
        return results
