"""Data for SViTT: annotation readers, PyTorch datasets, collators, a seeded DataLoader and the synthetic set."""

from .annotations import (
    EGOMCQ_INTER_VIDEO,
    EGOMCQ_INTRA_VIDEO,
    EGOMCQ_TYPE_NAMES,
    AnnotationError,
    answer_weights,
    load_answer_list,
    load_caption_annotations,
    load_egoclip_annotations,
    load_egomcq_annotations,
    load_qa_annotations,
    load_retrieval_test_annotations,
    parse_tags,
)
from .collators import MultipleChoiceCollator, VideoCollator, VideoQACollator, VideoTextCollator
from .loader import EpochShuffleSampler, make_dataloader, seed_worker
from .readers import (
    BadSampleTracker,
    EgoClipDataset,
    EgoMCQDataset,
    RetrievalEvalDataset,
    TooManyBadSamplesError,
    VideoCaptionDataset,
    VideoDatasetBase,
    VideoQADataset,
)
from .synthetic import SyntheticConfig, SyntheticDataset, generate_synthetic_dataset, load_synthetic_dataset

__all__ = [
    "EGOMCQ_INTER_VIDEO",
    "EGOMCQ_INTRA_VIDEO",
    "EGOMCQ_TYPE_NAMES",
    "AnnotationError",
    "BadSampleTracker",
    "EgoClipDataset",
    "EgoMCQDataset",
    "EpochShuffleSampler",
    "MultipleChoiceCollator",
    "RetrievalEvalDataset",
    "SyntheticConfig",
    "SyntheticDataset",
    "TooManyBadSamplesError",
    "VideoCaptionDataset",
    "VideoCollator",
    "VideoDatasetBase",
    "VideoQACollator",
    "VideoQADataset",
    "VideoTextCollator",
    "answer_weights",
    "generate_synthetic_dataset",
    "load_answer_list",
    "load_caption_annotations",
    "load_egoclip_annotations",
    "load_egomcq_annotations",
    "load_qa_annotations",
    "load_retrieval_test_annotations",
    "make_dataloader",
    "load_synthetic_dataset",
    "parse_tags",
    "seed_worker",
]
