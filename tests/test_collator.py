"""Time-step-major collator and the segment-count grouped sampler."""

import numpy as np
import torch
from accelerate.data_loader import BatchSamplerShard
from transformers import AutoTokenizer

from hf_memory.data import SegmentCollator, SegmentCountGroupedSampler, load_raw_datasets, padding_fraction
from hf_memory.data import preprocess_qa_dataset

PAD, CLS, L = 5, 3, 6


def document(num_segments, answer_segment=None):
    ids = [[7 + s] * L for s in range(num_segments)]
    starts = [L - 1] * num_segments
    ends = [L - 1] * num_segments
    if answer_segment is not None:
        starts[answer_segment], ends[answer_segment] = 2, 3
    return {
        "input_ids": ids, "attention_mask": [[1] * L] * num_segments, "token_type_ids": [[0] * L] * num_segments,
        "start_positions": starts, "end_positions": ends, "num_segments": num_segments, "example_id": "x",
        "offset_mapping": [[None] * L] * num_segments,
    }


def test_batch_is_time_step_major_with_inert_padding_segments():
    batch = SegmentCollator(PAD, CLS)([document(3, answer_segment=2), document(1)])
    assert batch["input_ids"].shape == (2, 3, L) and "offset_mapping" not in batch and "example_id" not in batch
    assert batch["segment_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["input_ids"][0, 2].tolist() == [9] * L
    # ended document: a lone <cls>, attended, labelled at <cls>
    assert batch["input_ids"][1, 1].tolist() == [PAD] * (L - 1) + [CLS]
    assert batch["attention_mask"][1, 1].tolist() == [0] * (L - 1) + [1]
    assert batch["start_positions"][1].tolist() == [L - 1] * 3
    assert batch["global_start_positions"].tolist() == [2 * L + 2, L - 1]
    assert batch["global_end_positions"].tolist() == [2 * L + 3, L - 1]


def test_segment_cap_moves_lost_answers_to_the_null_target():
    collator = SegmentCollator(PAD, CLS, max_segments=2)
    batch = collator([document(3, answer_segment=2), document(2, answer_segment=0)])
    assert batch["input_ids"].shape[1] == 2
    assert batch["start_positions"][0].tolist() == [L - 1, L - 1]
    assert batch["global_start_positions"].tolist() == [2 * L - 1, 2]


def test_backward_reading_puts_the_null_target_in_the_segment_read_last():
    """Reading last-to-first, a document's first segment has read the others: it holds the no-answer target."""
    batch = SegmentCollator(PAD, CLS, reading_order="backward")([document(3), document(2, answer_segment=1)])
    assert batch["global_start_positions"].tolist() == [L - 1, L + 2]
    assert batch["global_end_positions"].tolist() == [L - 1, L + 3]


def test_sampler_is_rank_agnostic_seeded_and_sharded_disjointly():
    counts = np.random.default_rng(0).integers(1, 9, size=50)
    first, second = (SegmentCountGroupedSampler(counts, batch_size=4, seed=3) for _ in range(2))
    assert list(first) == list(second) and sorted(first) == list(range(50))
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0 and sorted(first) == list(range(50))
    batch_sampler = torch.utils.data.BatchSampler(first, batch_size=4, drop_last=False)
    shards = [list(BatchSamplerShard(batch_sampler, num_processes=2, process_index=r)) for r in range(2)]
    seen = [set(i for batch in shard for i in batch) for shard in shards]
    full_batches = [set(i for batch in shard[:-1] for i in batch) for shard in shards]
    assert not full_batches[0] & full_batches[1] and seen[0] | seen[1] == set(range(50))
    # every full batch has (nearly) one segment count
    batches = [list(first)[i:i + 4] for i in range(0, 48, 4)]
    assert np.mean([np.ptp(counts[b]) for b in batches]) <= 1


def test_grouping_keeps_padding_under_ten_percent_on_real_documents(squad_small_file, xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    examples = load_raw_datasets(data_files={"validation": str(squad_small_file)})["validation"]
    features = preprocess_qa_dataset(
        examples, tokenizer, split="validation", max_seq_length=128, doc_stride=32, max_n_segs=None,
        max_query_length=32,
    )
    counts = np.array(features["num_segments"])
    assert counts.max() > counts.min()  # documents of different lengths
    grouped = list(SegmentCountGroupedSampler(counts, batch_size=8, seed=0))
    random_order = np.random.default_rng(0).permutation(len(counts))
    assert padding_fraction(counts, grouped, 8) < 0.10 < padding_fraction(counts, random_order, 8)
    capped = SegmentCountGroupedSampler(counts, batch_size=8, seed=0, max_segments=2)
    assert padding_fraction(counts, list(capped), 8, max_segments=2) < 0.10
