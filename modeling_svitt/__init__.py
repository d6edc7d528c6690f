"""SViTT and SViTT-Ego for transformers. Importing the package registers every class with the Auto classes, and
changes nothing else in transformers."""

import transformers
from transformers import AutoConfig, AutoModel

from .configuration_svitt import SViTTAnswerDecoderConfig, SViTTConfig, SViTTTextConfig, SViTTVisionConfig
from .answer_ranking import SViTTAnswerRankingOutput
from .losses import ContrastiveCache
from .modeling_heads import SViTTForPreTraining, SViTTForVideoTextRetrieval
from .modeling_multiple_choice import SViTTForMultipleChoice
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


def register_head_auto_classes() -> None:
    """Register the heads with transformers' Auto classes (in-process) and for Hub remote code.

    Retrieval has no Auto class: `AutoModelForZeroShotImageClassification` would promise its pipeline, which feeds
    still images and reads `logits_per_image`, so a video model cannot serve it. Load the retrieval head by class
    (`SViTTForVideoTextRetrieval.from_pretrained`), or from a remote-code folder with transformers'
    `get_class_from_dynamic_module("modeling_heads.SViTTForVideoTextRetrieval", folder)`.
    """
    head_auto_classes = {
        "AutoModelForPreTraining": SViTTForPreTraining,
        "AutoModelForVisualQuestionAnswering": SViTTForVideoQuestionAnswering,
        "AutoModelForMultipleChoice": SViTTForMultipleChoice,
    }
    for auto_class_name, model_class in head_auto_classes.items():
        getattr(transformers, auto_class_name).register(SViTTConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class_name)


_register_core_auto_classes()
register_head_auto_classes()
register_processing_auto_classes()

__all__ = [
    "ContrastiveCache",
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
