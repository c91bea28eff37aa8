"""Typed run configuration: dataclasses (``schema.py`` and its sections by job: ``annotate.py``, ``learn.py``,
``execution.py``), YAML files and dotted command-line overrides, the config
hash (``load.py``), and the reference of every key (``reference.py``).

    cfg = load_config("jobs/configs/demo.yaml", ["annotate.tools=[Calculator]", "corpus.limit=10"])
"""

from toolformer.config.load import CHOICES, check_choices, config_hash, load_config, to_dict
from toolformer.config.reference import config_reference
from toolformer.config.annotate import AnnotateConfig, MergeConfig, Optimizations, ToolParams
from toolformer.config.execution import RayConfig, StageResources
from toolformer.config.learn import BootstrapConfig, EvalConfig, TrainConfig
from toolformer.config.schema import CorpusConfig, EngineConfig, ModelConfig, RunConfig, ShardsConfig

__all__ = ["AnnotateConfig", "BootstrapConfig", "CHOICES", "CorpusConfig", "EngineConfig", "EvalConfig", "MergeConfig",
           "ModelConfig", "Optimizations", "RayConfig", "RunConfig", "ShardsConfig", "StageResources", "ToolParams",
           "TrainConfig", "check_choices", "config_hash", "config_reference", "load_config", "to_dict"]
