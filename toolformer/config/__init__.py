"""Typed run configuration: dataclasses (``schema.py``), YAML files and dotted command-line overrides, the config
hash (``load.py``), and the reference of every key (``reference.py``).

    cfg = load_config("jobs/configs/demo.yaml", ["annotate.tools=[Calculator]", "corpus.limit=10"])
"""

from toolformer.config.load import CHOICES, check_choices, config_hash, load_config, to_dict
from toolformer.config.reference import config_reference
from toolformer.config.schema import (AnnotateConfig, BootstrapConfig, CorpusConfig, EngineConfig, EvalConfig,
                                      MergeConfig, ModelConfig, Optimizations, RayConfig, RunConfig, ShardsConfig,
                                      StageResources, ToolParams, TrainConfig)

__all__ = ["AnnotateConfig", "BootstrapConfig", "CHOICES", "CorpusConfig", "EngineConfig", "EvalConfig", "MergeConfig",
           "ModelConfig", "Optimizations", "RayConfig", "RunConfig", "ShardsConfig", "StageResources", "ToolParams",
           "TrainConfig", "check_choices", "config_hash", "config_reference", "load_config", "to_dict"]
