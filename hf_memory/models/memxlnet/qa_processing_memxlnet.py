"""Long-document extractive QA for MemXLNet: segmentation with memory tokens, and n-best answer extraction.

Flat remote code (numpy/torch only, no hf_memory imports): it ships with checkpoints and serves the training data
pipeline, the evaluation and the QA pipeline alike, so all of them agree on the segment layout:

    <pad> ... <pad> [MEM_READ_0..m-1] context-window <sep> question <sep> [MEM_WRITE_0..m-1] <cls>

token_type_ids: 0 for READ tokens, context and the first <sep>; 1 for the question, the second <sep> and WRITE
tokens; 2 for <cls>; 0 for padding. With m = 0 this is the plain XLNet layout (context first, <cls> last, left pad).
"""

import math
from collections.abc import Sequence

import numpy as np

SPECIAL_TOKENS_PER_SEGMENT = 3  # <sep> <sep> <cls>
CONTEXT_TYPE_ID, QUESTION_TYPE_ID, CLS_TYPE_ID = 0, 1, 2


def context_budget(max_seq_length: int, num_memory_tokens: int, question_length: int) -> int:
    """Context tokens that fit in one segment next to the question, the memory tokens and the special tokens."""
    return max_seq_length - 2 * num_memory_tokens - SPECIAL_TOKENS_PER_SEGMENT - question_length


def check_segment_geometry(max_seq_length: int, doc_stride: int, num_memory_tokens: int, max_query_length: int):
    """Raise a ValueError when a segment cannot advance through the context (stride >= context budget)."""
    budget = context_budget(max_seq_length, num_memory_tokens, max_query_length)
    if doc_stride < 0 or budget <= doc_stride:
        raise ValueError(
            f"max_seq_length={max_seq_length} leaves {budget} context tokens per segment after "
            f"{2 * num_memory_tokens} memory tokens, {SPECIAL_TOKENS_PER_SEGMENT} special tokens and a question of up "
            f"to max_query_length={max_query_length} tokens, which must exceed doc_stride={doc_stride} (>= 0). "
            "Fix: raise max_seq_length, or lower doc_stride, max_query_length or memory_num_tokens."
        )


def window_starts(num_context_tokens: int, budget: int, doc_stride: int) -> np.ndarray:
    """Start of every context window; consecutive windows overlap by `doc_stride` tokens (HF `stride` semantics)."""
    step = budget - doc_stride
    num_windows = 1 if num_context_tokens <= budget else 1 + math.ceil((num_context_tokens - budget) / step)
    return np.arange(num_windows) * step


def char_span_to_token_span(
    token_starts: np.ndarray, token_ends: np.ndarray, answer_start: int, answer_end: int
) -> tuple[int, int]:
    """Token indices (inclusive) of the tokens covering characters [answer_start, answer_end) of the context."""
    first = int(np.searchsorted(token_ends, answer_start, side="right"))
    last = int(np.searchsorted(token_starts, answer_end, side="left")) - 1
    return first, last


def segment_document(
    question_ids: Sequence[int],
    context_ids: Sequence[int],
    context_offsets: Sequence[tuple[int, int]],
    *,
    max_seq_length: int,
    doc_stride: int,
    max_n_segs: int | None,
    special_ids: dict[str, int],
    memory_read_ids: Sequence[int] = (),
    memory_write_ids: Sequence[int] = (),
    with_labels: bool = False,
    answer_char_span: tuple[int, int] | None = None,
) -> dict:
    """Cut one (question, context) pair into segments of exactly `max_seq_length` tokens.

    `special_ids` needs `cls`, `sep` and `pad`. Returns lists per segment plus `num_windows` (before truncation to
    `max_n_segs`). With `with_labels` it also returns `start_positions`/`end_positions` per segment (the <cls>
    index when the answer, characters `answer_char_span` of the context or None for no answer, is not entirely
    inside the segment's window) and the document's `global_start_position`/`global_end_position`.
    """
    m = len(memory_read_ids)
    if len(memory_write_ids) != m:
        raise ValueError(f"Got {m} memory read ids but {len(memory_write_ids)} write ids; they must match.")
    budget = context_budget(max_seq_length, m, len(question_ids))
    if budget <= doc_stride:
        raise ValueError(
            f"A question of {len(question_ids)} tokens leaves {budget} context tokens per segment, not more than "
            f"doc_stride={doc_stride}. Fix: truncate questions (max_query_length) or raise max_seq_length."
        )
    context_ids = np.asarray(context_ids, dtype=np.int64)
    offsets = np.asarray(context_offsets, dtype=np.int64).reshape(-1, 2)
    starts = window_starts(len(context_ids), budget, doc_stride)
    num_windows = len(starts)
    if max_n_segs is not None:
        starts = starts[:max_n_segs]

    cls_index = max_seq_length - 1
    read = np.asarray(memory_read_ids, dtype=np.int64)
    tail = np.concatenate(
        [[special_ids["sep"]], np.asarray(question_ids, dtype=np.int64), [special_ids["sep"]],
         np.asarray(memory_write_ids, dtype=np.int64), [special_ids["cls"]]]
    )
    tail_types = np.concatenate(
        [[CONTEXT_TYPE_ID], np.full(len(tail) - 2, QUESTION_TYPE_ID), [CLS_TYPE_ID]]
    )
    answer_tokens = None
    if answer_char_span is not None and len(context_ids):
        answer_tokens = char_span_to_token_span(offsets[:, 0], offsets[:, 1], *answer_char_span)

    out = {key: [] for key in ("input_ids", "attention_mask", "token_type_ids", "offset_mapping")}
    if with_labels:
        out["start_positions"], out["end_positions"] = [], []
    for start in starts:
        stop = min(start + budget, len(context_ids))
        window_len = stop - start
        num_pad = max_seq_length - (m + window_len + len(tail))
        ids = np.concatenate(
            [np.full(num_pad, special_ids["pad"]), read, context_ids[start:stop], tail]
        )
        types = np.concatenate([np.zeros(num_pad + m + window_len, dtype=np.int64), tail_types])
        mask = np.concatenate([np.zeros(num_pad, dtype=np.int64), np.ones(max_seq_length - num_pad, dtype=np.int64)])
        context_first = num_pad + m
        segment_offsets = [None] * max_seq_length
        segment_offsets[context_first:context_first + window_len] = offsets[start:stop].tolist()
        out["input_ids"].append(ids.tolist())
        out["attention_mask"].append(mask.tolist())
        out["token_type_ids"].append(types.tolist())
        out["offset_mapping"].append(segment_offsets)
        if with_labels:
            label = (cls_index, cls_index)
            if answer_tokens is not None and start <= answer_tokens[0] <= answer_tokens[1] < stop:
                label = (int(context_first + answer_tokens[0] - start), int(context_first + answer_tokens[1] - start))
            out["start_positions"].append(label[0])
            out["end_positions"].append(label[1])
    out["num_segments"] = len(starts)
    out["num_windows"] = num_windows
    if with_labels:
        global_start, global_end = global_span_labels(
            np.asarray([out["start_positions"]]), np.asarray([out["end_positions"]]), np.asarray([len(starts)]),
            cls_index,
        )
        out["global_start_position"], out["global_end_position"] = int(global_start[0]), int(global_end[0])
    return out


def prepare_qa_features(
    tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    answers: Sequence[dict] | None = None,
    *,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_n_segs: int | None = None,
    max_query_length: int = 64,
    memory_read_ids: Sequence[int] = (),
    memory_write_ids: Sequence[int] = (),
) -> dict:
    """Batched segmentation (one row per document), usable directly as a `datasets.map(batched=True)` function.

    Needs a fast tokenizer (offset mappings). `answers` follows the `squad_v2` schema
    (`{"text": [...], "answer_start": [...]}`, empty lists for unanswerable questions); the first gold answer labels
    the document. Adds `question_truncated` (the question was cut to `max_query_length` tokens).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("prepare_qa_features needs a fast tokenizer (offset mappings). Fix: load it with AutoTokenizer.")
    special_ids = {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id, "pad": tokenizer.pad_token_id}
    missing = [name for name, value in special_ids.items() if value is None]
    if missing:
        raise ValueError(f"The tokenizer has no {', '.join(missing)} token. Fix: use an XLNet-style tokenizer.")
    check_segment_geometry(max_seq_length, doc_stride, len(memory_read_ids), max_query_length)
    question_enc = tokenizer([q.lstrip() for q in questions], add_special_tokens=False)
    context_enc = tokenizer(list(contexts), add_special_tokens=False, return_offsets_mapping=True)
    rows: dict[str, list] = {}
    for i, question_ids in enumerate(question_enc["input_ids"]):
        answer_char_span = None
        if answers is not None and len(answers[i]["text"]):
            answer_start = answers[i]["answer_start"][0]
            answer_char_span = (answer_start, answer_start + len(answers[i]["text"][0]))
        document = segment_document(
            question_ids[:max_query_length],
            context_enc["input_ids"][i],
            context_enc["offset_mapping"][i],
            max_seq_length=max_seq_length,
            doc_stride=doc_stride,
            max_n_segs=max_n_segs,
            special_ids=special_ids,
            memory_read_ids=memory_read_ids,
            memory_write_ids=memory_write_ids,
            with_labels=answers is not None,
            answer_char_span=answer_char_span,
        )
        document["question_truncated"] = len(question_ids) > max_query_length
        for key, value in document.items():
            rows.setdefault(key, []).append(value)
    return rows


def global_span_labels(
    start_positions: np.ndarray, end_positions: np.ndarray, num_segments: np.ndarray, cls_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Document-level targets over the flattened (segments x seq_len) logits, for the global softmax.

    The positive segment is the first one whose start label is not the <cls> index (so single-token answers, where
    start == end, count). Documents without an answer in their first `num_segments` segments target the <cls> of
    their last segment, the only one that has read the whole document through memory; the postprocessing reads the
    null score there too (`null_score_reduction="last"`). Arrays have shape (documents, segments).
    """
    seq_len = cls_index + 1
    segments = np.arange(start_positions.shape[1])
    positive = (start_positions != cls_index) & (segments < num_segments[:, None])
    has_answer = positive.any(-1)
    first = positive.argmax(-1)
    rows = np.arange(len(first))
    null_target = (num_segments - 1) * seq_len + cls_index
    global_start = np.where(has_answer, first * seq_len + start_positions[rows, first], null_target)
    global_end = np.where(has_answer, first * seq_len + end_positions[rows, first], null_target)
    return global_start, global_end


def offsets_array(offset_mapping: Sequence[Sequence] | np.ndarray) -> np.ndarray:
    """Offsets as one compact (segments, seq_len, 2) int array with -1 outside the context.

    Per-token Python pairs cost tens of bytes each; long documents keep their offsets until the answer is chosen.
    """
    if isinstance(offset_mapping, np.ndarray):
        return offset_mapping
    array = np.full((len(offset_mapping), len(offset_mapping[0]), 2), -1, dtype=np.int32)
    for s, segment in enumerate(offset_mapping):
        inside = [i for i, pair in enumerate(segment) if pair is not None]
        if inside:
            array[s, inside] = np.asarray([segment[i] for i in inside], dtype=np.int32)
    return array


def _char_offsets(offset_mapping: Sequence[Sequence] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segments, seq_len) start/end character arrays; -1 outside the context."""
    array = offsets_array(offset_mapping).astype(np.int64)
    return array[..., 0], array[..., 1]


def find_cls_positions(input_ids: np.ndarray, cls_token_id: int) -> np.ndarray:
    """Index of the (last) <cls> token of every segment; a ValueError when a segment has none."""
    is_cls = np.asarray(input_ids) == cls_token_id
    if not is_cls.any(-1).all():
        raise ValueError(
            f"A segment has no <cls> token (id {cls_token_id}). Fix: build segments with prepare_qa_features."
        )
    return is_cls.shape[-1] - 1 - np.argmax(is_cls[..., ::-1], axis=-1)


def null_score(start_logits, end_logits, cls_positions, reduction: str) -> float:
    """Document null score from the <cls> logits of its segments.

    `"min"` (per-segment training, as the official `utils_qa`): the segment most sure of an answer decides.
    `"last"` (global-softmax training): the single null target, the last segment's <cls>.
    """
    rows = np.arange(len(cls_positions))
    per_segment = start_logits[rows, cls_positions] + end_logits[rows, cls_positions]
    if reduction == "min":
        return float(per_segment.min())
    if reduction == "last":
        return float(per_segment[-1])
    raise ValueError(f"Unknown null_score_reduction={reduction!r}. Fix: use 'min' or 'last'.")


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    context_mask: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> list[tuple[int, int, int]]:
    """Top `n_best_size` (segment, start, end) spans of one document, scored by start + end logit.

    Top-k starts x top-k ends per segment, vectorised over all segments; spans must lie in the context, with
    end >= start and at most `max_answer_length` tokens.
    """
    start_masked = np.where(context_mask, start_logits, -np.inf)
    end_masked = np.where(context_mask, end_logits, -np.inf)
    k = min(n_best_size, start_logits.shape[-1])
    top_starts = np.argsort(-start_masked, axis=-1, kind="stable")[:, :k]
    top_ends = np.argsort(-end_masked, axis=-1, kind="stable")[:, :k]
    start_scores = np.take_along_axis(start_masked, top_starts, -1)
    end_scores = np.take_along_axis(end_masked, top_ends, -1)
    scores = start_scores[:, :, None] + end_scores[:, None, :]
    length = top_ends[:, None, :] - top_starts[:, :, None] + 1
    valid = np.isfinite(scores) & (length >= 1) & (length <= max_answer_length)
    scores = np.where(valid, scores, -np.inf)
    flat = scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:n_best_size]
    order = order[np.isfinite(flat[order])]
    segments, start_rank, end_rank = np.unravel_index(order, scores.shape)
    return list(
        zip(
            segments.tolist(),
            top_starts[segments, start_rank].tolist(),
            top_ends[segments, end_rank].tolist(),
        )
    )


def postprocess_qa_predictions(
    examples: Sequence[dict],
    features: Sequence[dict],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    cls_token_id: int,
    version_2_with_negative: bool = True,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
    null_score_reduction: str = "min",
) -> dict:
    """Answers for whole documents from per-segment logits of shape (documents, segments, seq_len).

    `features[i]` is document i (`example_id`, `offset_mapping`, `input_ids`, `num_segments`); `examples` have
    `id` and `context`. Returns `predictions` (id -> text, "" when the null score beats the best span by more than
    `null_score_diff_threshold`), `best_non_null` (id -> best span text), `nbest` (id -> list of dicts) and
    `null_odds` (id -> null score minus best span score; only with `version_2_with_negative`). n-best entries carry the
    answer's character offsets `start`/`end` into the context (0, 0 for the empty answer), which the QA pipeline reports.
    """
    contexts = {example["id"]: example["context"] for example in examples}
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    if start_logits.shape[0] != len(features):
        raise ValueError(f"Got logits for {start_logits.shape[0]} documents but {len(features)} features.")
    predictions, best_non_null, nbest_json, null_odds = {}, {}, {}, {}
    for i, feature in enumerate(features):
        example_id = feature["example_id"]
        if example_id not in contexts:
            raise ValueError(f"Feature {i} refers to example_id={example_id!r}, which is not among the examples.")
        context = contexts[example_id]
        num_segments = feature["num_segments"]
        doc_start, doc_end = start_logits[i, :num_segments], end_logits[i, :num_segments]
        char_starts, char_ends = _char_offsets(feature["offset_mapping"][:num_segments])
        spans = best_spans(doc_start, doc_end, char_starts >= 0, n_best_size, max_answer_length)
        candidates = [
            {
                "text": context[char_starts[s, a]:char_ends[s, b]],
                "start_logit": float(doc_start[s, a]),
                "end_logit": float(doc_end[s, b]),
                "start": int(char_starts[s, a]),
                "end": int(char_ends[s, b]),
            }
            for s, a, b in spans
        ]
        if not candidates:
            candidates = [{"text": "", "start_logit": 0.0, "end_logit": 0.0, "start": 0, "end": 0}]
        best = candidates[0]
        entries = list(candidates)
        if version_2_with_negative:
            cls_positions = find_cls_positions(np.asarray(feature["input_ids"][:num_segments]), cls_token_id)
            null = null_score(doc_start, doc_end, cls_positions, null_score_reduction)
            entries.append({"text": "", "start_logit": null / 2, "end_logit": null / 2, "start": 0, "end": 0})
            entries.sort(key=lambda entry: entry["start_logit"] + entry["end_logit"], reverse=True)
            score_diff = null - best["start_logit"] - best["end_logit"]
            null_odds[example_id] = float(score_diff)
            predictions[example_id] = "" if score_diff > null_score_diff_threshold else best["text"]
        else:
            predictions[example_id] = best["text"]
        scores = np.array([e["start_logit"] + e["end_logit"] for e in entries])
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        nbest_json[example_id] = [
            {**entry, "probability": float(probability)} for entry, probability in zip(entries, probabilities)
        ]
        best_non_null[example_id] = best["text"]
    return {"predictions": predictions, "best_non_null": best_non_null, "nbest": nbest_json, "null_odds": null_odds}


__all__ = [
    "check_segment_geometry",
    "context_budget",
    "global_span_labels",
    "postprocess_qa_predictions",
    "prepare_qa_features",
    "segment_document",
]
