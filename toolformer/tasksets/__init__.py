"""The evaluation sets as data: each read into ``Example``s from local files (or generated), below both the
corpus (the math corpus reads the math sets; decontamination reads every evaluated set) and the evaluation (which
scores them). Nothing here imports the corpus, the evaluation or the training."""

from toolformer.tasksets.files import ALL_TOOLS, MLQA_LANGS, Example, read_jsonl
from toolformer.tasksets.knowledge import (dateset, lama_google_re, lama_squad, lama_trex, mlqa, mlqa_de, nq, templama,
                                           trex_temporal_templates, triviaqa, webquestions)
from toolformer.tasksets.math import (arithmetic, asdiv, asdiv_file, fold_ids, math_file, mawps, mawps_file,
                                      qa_jsonl_file, read_ids, svamp, svamp_file)
from toolformer.tasksets.registry import BUILTIN, FILE_LOADERS, HUB, LOADERS, load_hub_task, load_task

__all__ = ["ALL_TOOLS", "BUILTIN", "Example", "FILE_LOADERS", "HUB", "LOADERS", "MLQA_LANGS", "arithmetic", "asdiv",
           "asdiv_file", "dateset", "fold_ids", "lama_google_re", "lama_squad", "lama_trex", "load_hub_task",
           "load_task", "math_file", "mawps", "mawps_file", "mlqa", "mlqa_de", "nq", "qa_jsonl_file", "read_ids",
           "read_jsonl", "svamp", "svamp_file", "templama", "trex_temporal_templates", "triviaqa", "webquestions"]
