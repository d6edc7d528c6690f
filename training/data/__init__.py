"""Data for SViTT: annotation readers, PyTorch datasets, collators, a seeded DataLoader and the synthetic set."""

from .annotations import (
    ANNOTATION_FORMATS,
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
from .records import RecordTable, open_records
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
from .shards import write_shards
from .streaming import StreamedVideoDataset, StreamLoader, expand_shards
from .synthetic import SyntheticConfig, SyntheticDataset, generate_synthetic_dataset, load_synthetic_dataset

__all__ = [
    "ANNOTATION_FORMATS",
    "EGOMCQ_INTER_VIDEO",
    "EGOMCQ_INTRA_VIDEO",
    "EGOMCQ_TYPE_NAMES",
    "AnnotationError",
    "BadSampleTracker",
    "EgoClipDataset",
    "EgoMCQDataset",
    "EpochShuffleSampler",
    "MultipleChoiceCollator",
    "RecordTable",
    "RetrievalEvalDataset",
    "StreamLoader",
    "StreamedVideoDataset",
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
    "expand_shards",
    "generate_synthetic_dataset",
    "load_answer_list",
    "load_caption_annotations",
    "load_egoclip_annotations",
    "load_egomcq_annotations",
    "load_qa_annotations",
    "load_retrieval_test_annotations",
    "make_dataloader",
    "open_records",
    "load_synthetic_dataset",
    "parse_tags",
    "seed_worker",
    "write_shards",
]
