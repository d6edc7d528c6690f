"""SViTT and SViTT-Ego for transformers. Importing the package registers every class with the Auto classes."""

from transformers import AutoConfig, AutoModel

from .checkpoint_names import install_checkpoint_name_hint
from .configuration_svitt import SViTTAnswerDecoderConfig, SViTTConfig, SViTTTextConfig, SViTTVisionConfig
from .answer_ranking import SViTTAnswerRankingOutput
from .modeling_heads import (
    SViTTForMultipleChoice,
    SViTTForPreTraining,
    SViTTForVideoTextRetrieval,
    register_head_auto_classes,
)
from .modeling_svitt import SViTTModel, SViTTOutput, SViTTPreTrainedModel
from .modeling_svitt_text import SViTTTextModel, SViTTTextModelOutput
from .modeling_svitt_vision import SViTTVisionModel, SViTTVisionModelOutput
from .modeling_video_qa import SViTTForVideoQuestionAnswering
from .retrieval_ranking import SViTTRetrievalOutput, SViTTTextGallery, SViTTVideoGallery
from .processing_svitt import SViTTProcessor, SViTTVideoProcessor, register_processing_auto_classes
from .tokenization_svitt import SViTTTokenizer


def _register_core_auto_classes() -> None:
    for config_class in (SViTTConfig, SViTTVisionConfig, SViTTTextConfig, SViTTAnswerDecoderConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(SViTTConfig, SViTTModel, exist_ok=True)
    AutoModel.register(SViTTVisionConfig, SViTTVisionModel, exist_ok=True)
    AutoModel.register(SViTTTextConfig, SViTTTextModel, exist_ok=True)


_register_core_auto_classes()
register_head_auto_classes()
register_processing_auto_classes()
install_checkpoint_name_hint()

__all__ = [
    "SViTTAnswerDecoderConfig",
    "SViTTAnswerRankingOutput",
    "SViTTConfig",
    "SViTTForMultipleChoice",
    "SViTTForPreTraining",
    "SViTTForVideoQuestionAnswering",
    "SViTTForVideoTextRetrieval",
    "SViTTModel",
    "SViTTOutput",
    "SViTTPreTrainedModel",
    "SViTTProcessor",
    "SViTTRetrievalOutput",
    "SViTTTextConfig",
    "SViTTTextGallery",
    "SViTTTextModel",
    "SViTTTextModelOutput",
    "SViTTTokenizer",
    "SViTTVideoGallery",
    "SViTTVideoProcessor",
    "SViTTVisionConfig",
    "SViTTVisionModel",
    "SViTTVisionModelOutput",
]
