"""Data loading, segmentation into memory documents, and time-step-major batching."""

from .collator import SegmentCollator, SegmentCountGroupedSampler, padding_fraction
from ..models.memxlnet.qa_processing_memxlnet import prepare_qa_features
from .squad import SQUAD_V2_FEATURES, clean_squad_dataset, load_raw_datasets, load_squad_json, preprocess_qa_dataset

__all__ = [
    "SQUAD_V2_FEATURES",
    "SegmentCollator",
    "SegmentCountGroupedSampler",
    "clean_squad_dataset",
    "load_raw_datasets",
    "load_squad_json",
    "padding_fraction",
    "prepare_qa_features",
    "preprocess_qa_dataset",
]
