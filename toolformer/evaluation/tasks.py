"""The evaluation's tasks: the sets themselves are read in ``toolformer.tasksets`` (below the corpus, which reads
them too); this module keeps the names the evaluation and its users import."""

from toolformer.tasksets import *  # noqa: F401,F403
from toolformer.tasksets import __all__  # noqa: F401
from toolformer.tasksets.files import _without  # noqa: F401
from toolformer.tasksets.knowledge import _DATESET_TEMPLATES, _mask_last  # noqa: F401
from toolformer.tasksets.math import _num  # noqa: F401
from toolformer.tasksets.registry import _hub_examples  # noqa: F401
