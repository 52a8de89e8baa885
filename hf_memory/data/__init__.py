"""Data loading, segmentation into memory documents, and time-step-major batching."""

from .collator import SegmentCollator, SegmentCountGroupedSampler, padding_fraction
from .squad import SQUAD_V2_FEATURES, clean_squad_dataset, load_raw_datasets, load_squad_json, preprocess_qa_dataset

__all__ = [
    "SQUAD_V2_FEATURES",
    "SegmentCollator",
    "SegmentCountGroupedSampler",
    "clean_squad_dataset",
    "load_raw_datasets",
    "load_squad_json",
    "padding_fraction",
    "preprocess_qa_dataset",
]
