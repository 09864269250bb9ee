"""growformer: grow and shrink transformers while they learn."""

from growformer.config import ConfigError, ModelConfig
from growformer.expand import GrowthError, GrowthOptions, expand_state, grow, grow_
from growformer.model import Transformer, model_from_state
from growformer.resize import ParamResize, ResizeRecord

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GrowthError",
    "GrowthOptions",
    "ModelConfig",
    "ParamResize",
    "ResizeRecord",
    "Transformer",
    "expand_state",
    "grow",
    "grow_",
    "model_from_state",
]
