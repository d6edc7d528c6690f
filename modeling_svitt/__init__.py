"""SViTT and SViTT-Ego for transformers. Importing the package registers every class with the Auto classes."""

from transformers import AutoConfig, AutoModel

from .configuration_svitt import SViTTConfig, SViTTTextConfig, SViTTVisionConfig
from .modeling_heads import (
    SViTTForMultipleChoice,
    SViTTForPreTraining,
    SViTTForVideoQuestionAnswering,
    SViTTForVideoTextRetrieval,
    register_head_auto_classes,
)
from .modeling_svitt import (
    SViTTModel,
    SViTTOutput,
    SViTTPreTrainedModel,
    SViTTTextModel,
    SViTTTextModelOutput,
    SViTTVisionModel,
    SViTTVisionModelOutput,
)
from .processing_svitt import SViTTProcessor, SViTTVideoProcessor, register_processing_auto_classes
from .tokenization_svitt import SViTTTokenizer


def _register_core_auto_classes() -> None:
    for config_class in (SViTTConfig, SViTTVisionConfig, SViTTTextConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(SViTTConfig, SViTTModel, exist_ok=True)
    AutoModel.register(SViTTVisionConfig, SViTTVisionModel, exist_ok=True)
    AutoModel.register(SViTTTextConfig, SViTTTextModel, exist_ok=True)


_register_core_auto_classes()
register_head_auto_classes()
register_processing_auto_classes()

__all__ = [
    "SViTTConfig",
    "SViTTForMultipleChoice",
    "SViTTForPreTraining",
    "SViTTForVideoQuestionAnswering",
    "SViTTForVideoTextRetrieval",
    "SViTTModel",
    "SViTTOutput",
    "SViTTPreTrainedModel",
    "SViTTProcessor",
    "SViTTTextConfig",
    "SViTTTextModel",
    "SViTTTextModelOutput",
    "SViTTTokenizer",
    "SViTTVideoProcessor",
    "SViTTVisionConfig",
    "SViTTVisionModel",
    "SViTTVisionModelOutput",
]
