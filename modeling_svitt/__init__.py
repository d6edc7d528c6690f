"""SViTT and SViTT-Ego for transformers. Importing the package registers every class with the Auto classes."""

from transformers import AutoConfig, AutoModel

from .configuration_svitt import SViTTConfig, SViTTTextConfig, SViTTVisionConfig
from .modeling_svitt import (
    SViTTModel,
    SViTTOutput,
    SViTTPreTrainedModel,
    SViTTTextModel,
    SViTTTextModelOutput,
    SViTTVisionModel,
    SViTTVisionModelOutput,
)


def _register_core_auto_classes() -> None:
    for config_class in (SViTTConfig, SViTTVisionConfig, SViTTTextConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(SViTTConfig, SViTTModel, exist_ok=True)
    AutoModel.register(SViTTVisionConfig, SViTTVisionModel, exist_ok=True)
    AutoModel.register(SViTTTextConfig, SViTTTextModel, exist_ok=True)


_register_core_auto_classes()

__all__ = [
    "SViTTConfig",
    "SViTTModel",
    "SViTTOutput",
    "SViTTPreTrainedModel",
    "SViTTTextConfig",
    "SViTTTextModel",
    "SViTTTextModelOutput",
    "SViTTVisionConfig",
    "SViTTVisionModel",
    "SViTTVisionModelOutput",
]
