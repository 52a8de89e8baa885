"""Time-step-major batching of segmented documents, and a sampler that groups documents by segment count.

A batch holds whole documents: tensors `[batch, segments, seq_len]`; the trainer feeds segment t of every document
at step t and carries the memory. `segment_mask[b, t]` is False once document b has ended, so its memory passes
through unchanged and it adds nothing to the loss.
"""

import math

import numpy as np
import torch

from ..models.memxlnet.qa_processing_memxlnet import CLS_TYPE_ID, global_span_labels

SEGMENT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_KEYS = ("start_positions", "end_positions")


class SegmentCollator:
    """Stack documents into `[batch, segments, seq_len]` tensors, padding short documents with inert segments.

    `max_segments` (mutable, set by the progressive-segments callback) keeps the first segments of each document;
    labels of an answer beyond the cut become the <cls> index and the global labels are recomputed. String columns
    and `offset_mapping` are dropped (they are only needed by the postprocessing). `reading_order` (the model's
    `config.reading_order`) says which segment is read last, whose <cls> is the global no-answer target.
    """

    def __init__(
        self, pad_token_id: int, cls_token_id: int, max_segments: int | None = None, reading_order: str = "forward"
    ):
        self.pad_token_id = pad_token_id
        self.cls_token_id = cls_token_id
        self.max_segments = max_segments
        self.reading_order = reading_order

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        counts = np.array([f["num_segments"] for f in features])
        if self.max_segments is not None:
            counts = np.minimum(counts, self.max_segments)
        num_steps = int(counts.max())
        seq_len = len(features[0]["input_ids"][0])
        batch = {
            "input_ids": np.full((len(features), num_steps, seq_len), self.pad_token_id, dtype=np.int64),
            "attention_mask": np.zeros((len(features), num_steps, seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((len(features), num_steps, seq_len), dtype=np.int64),
        }
        # An ended document still runs through the model (rows stay aligned); give it a lone <cls> to attend to.
        batch["input_ids"][:, :, -1] = self.cls_token_id
        batch["attention_mask"][:, :, -1] = 1
        batch["token_type_ids"][:, :, -1] = CLS_TYPE_ID
        with_labels = all(key in features[0] for key in LABEL_KEYS)
        if with_labels:
            for key in LABEL_KEYS:
                batch[key] = np.full((len(features), num_steps), seq_len - 1, dtype=np.int64)
        for row, (feature, count) in enumerate(zip(features, counts)):
            for key in SEGMENT_KEYS + (LABEL_KEYS if with_labels else ()):
                batch[key][row, :count] = np.asarray(feature[key][:count])
        segment_mask = np.arange(num_steps)[None, :] < counts[:, None]
        if with_labels:
            batch["global_start_positions"], batch["global_end_positions"] = global_span_labels(
                batch["start_positions"], batch["end_positions"], counts, seq_len - 1, self.reading_order
            )
        tensors = {key: torch.from_numpy(value) for key, value in batch.items()}
        tensors["segment_mask"] = torch.from_numpy(segment_mask)
        return tensors


class SegmentCountGroupedSampler(torch.utils.data.Sampler):
    """Seeded, rank-agnostic order in which each run of `batch_size` documents has similar segment counts.

    Every rank yields the same order; `accelerate` shards the batches between ranks. Documents are shuffled, stably
    sorted by (capped) segment count, cut into batches, and the full batches are shuffled; a short remainder batch
    goes last so batch boundaries stay aligned with the DataLoader's. `set_epoch` changes the shuffle; `max_segments`
    (set by the curriculum) changes the counts used for grouping.
    """

    def __init__(self, segment_counts, batch_size: int, seed: int = 0, max_segments: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.segment_counts = np.asarray(segment_counts)
        self.batch_size = batch_size
        self.seed = seed
        self.max_segments = max_segments
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.segment_counts)

    def __iter__(self):
        generator = np.random.default_rng([self.seed, self.epoch])
        counts = self.segment_counts
        if self.max_segments is not None:
            counts = np.minimum(counts, self.max_segments)
        shuffled = generator.permutation(len(counts))
        by_count = shuffled[np.argsort(counts[shuffled], kind="stable")]
        num_full = len(by_count) // self.batch_size
        full = by_count[: num_full * self.batch_size].reshape(num_full, self.batch_size)
        order = np.concatenate([full[generator.permutation(num_full)].reshape(-1), by_count[num_full * self.batch_size:]])
        return iter(order.tolist())


def padding_fraction(segment_counts, order, batch_size: int, max_segments: int | None = None) -> float:
    """Share of the segment slots in the batches of `order` that are padding (the work the grouping saves)."""
    counts = np.asarray(segment_counts)[np.asarray(order)]
    if max_segments is not None:
        counts = np.minimum(counts, max_segments)
    num_batches = math.ceil(len(counts) / batch_size)
    padded = np.zeros(num_batches * batch_size, dtype=np.int64)
    padded[: len(counts)] = counts
    batches = padded.reshape(num_batches, batch_size)
    used_rows = (np.arange(num_batches * batch_size) < len(counts)).reshape(num_batches, batch_size).sum(-1)
    slots = (batches.max(-1) * used_rows).sum()
    return float(1.0 - counts.sum() / slots)
