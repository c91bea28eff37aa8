"""Every evaluation set by name: ``load_task`` (a seeded sample, a file of your own, a list of ids such as a
held-out fold) and the same sets from the Hugging Face hub for users with network."""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Callable, Sequence

from toolformer.tasksets.files import ALL_TOOLS, MLQA_LANGS, Example, _without
from toolformer.tasksets.knowledge import (dateset, dateset_file, lama_google_re, lama_squad, lama_trex, mlqa, mlqa_de,
                                           nq, templama, trex_temporal_templates, triviaqa, webquestions)
from toolformer.tasksets.math import arithmetic, asdiv, math_file, mawps, read_ids, svamp


LOADERS: dict[str, Callable[[Path], list[Example]]] = {
    "lama_squad": lama_squad, "lama_google_re": lama_google_re, "lama_trex": lama_trex,
    "asdiv": asdiv, "svamp": svamp, "mawps": mawps,
    "webquestions": webquestions, "nq": nq, "triviaqa": triviaqa,
    "mlqa": mlqa, "mlqa_de_de": mlqa_de,
    "dateset": lambda data: dateset(),
    "trex_temporal_templates": trex_temporal_templates,
    "templama": lambda data: templama(Path(data) / "templama"),  # or load_task(..., templama_path=...)
    "arithmetic": lambda data: arithmetic(),
}
# Tasks that need no files (the demo uses them; it must run without shared/data).
BUILTIN = ("dateset", "arithmetic")


# Tasks read from one file, which ``eval.task_paths.<task>`` can replace: a math task any math file (its format
# told by its content), TempLAMA its JSONL, Dateset a JSONL of date questions (question, answers, today).
FILE_LOADERS: dict[str, Callable[[Path], list[Example]]] = {
    **{task: functools.partial(math_file, task=task) for task in ("asdiv", "svamp", "mawps")},
    "templama": templama,
    "dateset": dateset_file,
}


def load_task(name: str, data: Path, limit: int | None = None, seed: int = 0,
              tools: Sequence[str] | None = None, templama_path: str | Path | None = None,
              path: str | Path | None = None, ids: str | Path | None = None) -> list[Example]:
    """A task's examples (a seeded sample of ``limit``); ``tools`` replaces the paper's tool subset; ``path``
    reads the task from that file instead of the shipped one (tasks in ``FILE_LOADERS``); ``ids`` (a file, one
    id per line) keeps only those items (e.g. a held-out fold), an id the task lacks being an error."""
    if name not in LOADERS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(LOADERS)}")
    if name == "templama" and templama_path and not path:
        path = templama_path
    if path:
        if name not in FILE_LOADERS:
            raise ValueError(f"task {name!r} takes no path (tasks read from a file: {', '.join(FILE_LOADERS)})")
        if name != "templama" and not Path(path).exists():  # templama names the setting in its own error
            raise FileNotFoundError(f"the file given for task {name!r} does not exist: {path}")
        examples = FILE_LOADERS[name](Path(path))
    else:
        examples = LOADERS[name](Path(data))
    if ids:
        wanted = read_ids(ids)
        have = {e.uid for e in examples}
        missing = [i for i in wanted if i not in have]
        if len(missing) == len(wanted):
            raise ValueError(f"task {name!r}: none of the {len(wanted)} ids in {ids} is an item of the task")
        keep = set(wanted)
        # ids the task skips (e.g. ASDiv problems without a numeric answer) are not evaluated
        examples = [e for e in examples if e.uid in keep]
    if tools is not None:
        for e in examples:
            e.tools = tuple(tools)
    if limit is not None and limit < len(examples):
        examples = random.Random(seed).sample(examples, limit)
    return examples


# -- the same sets from the Hugging Face hub (for users with network; not exercised here: no network) ----------
HUB = {
    "nq": ("google-research-datasets/nq_open", None, "validation"),
    "webquestions": ("stanfordnlp/web_questions", None, "test"),
    "triviaqa": ("mandarjoshi/trivia_qa", "rc.nocontext", "validation"),
    **{f"mlqa_{lang}": ("facebook/mlqa", f"mlqa.en.{lang}", "test") for lang in MLQA_LANGS},
}


def _hub_examples(task: str, rows) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        if task == "nq":
            out.append(Example(task, str(i), r["question"], list(r["answer"]), "qa", _without("QA")))
        elif task == "webquestions":
            out.append(Example(task, str(i), r["question"], list(r["answers"]), "qa", _without("QA")))
        elif task == "triviaqa":
            a = r["answer"]
            out.append(Example(task, r.get("question_id", str(i)), r["question"], [a["value"], *a.get("aliases", [])],
                               "qa", _without("QA")))
        else:  # mlqa_<lang>: English context, question in <lang>
            out.append(Example(task, r["id"], f"{r['context']}\n{r['question']}", list(r["answers"]["text"]), "mlqa",
                               ALL_TOOLS, {"lang": task.split("_")[1]}))
    return out


def load_hub_task(name: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """A task by its hub name (needs network, or a populated HF cache)."""
    if name not in HUB:
        raise ValueError(f"no hub source for {name!r}; hub tasks: {', '.join(HUB)} (the others load from files)")
    try:
        from datasets import load_dataset

        repo, config, split = HUB[name]
        rows = load_dataset(repo, config, split=split)
    except Exception as exc:  # offline, unknown repo, schema change: say what and where
        raise RuntimeError(f"could not load {name} from the hub ({HUB[name][0]}): {type(exc).__name__}: {exc}. "
                           "Without network, point eval.data_dir at local files instead.") from exc
    examples = _hub_examples(name, rows)
    if limit is not None and limit < len(examples):
        examples = random.Random(seed).sample(examples, limit)
    return examples
