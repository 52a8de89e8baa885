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


def special_token_ids(tokenizer) -> dict[str, int]:
    """The <cls>, <sep> and <pad> ids the segment layout needs; a ValueError naming the missing ones."""
    special_ids = {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id, "pad": tokenizer.pad_token_id}
    missing = [name for name, value in special_ids.items() if value is None]
    if missing:
        raise ValueError(f"The tokenizer has no {', '.join(missing)} token. Fix: use an XLNet-style tokenizer.")
    return special_ids


def segment_template(
    question_ids: Sequence[int],
    *,
    max_seq_length: int,
    special_ids: dict[str, int],
    memory_read_ids: Sequence[int] = (),
    memory_write_ids: Sequence[int] = (),
) -> dict:
    """The tokens around the context window, the same in every segment of a document (layout in the module docstring).

    `build_segments` fills in the windows; the QA pipeline builds templates for other tokenizers' layouts too.
    """
    m = len(memory_read_ids)
    if len(memory_write_ids) != m:
        raise ValueError(f"Got {m} memory read ids but {len(memory_write_ids)} write ids; they must match.")
    after_ids = np.concatenate(
        [[special_ids["sep"]], np.asarray(question_ids, dtype=np.int64), [special_ids["sep"]],
         np.asarray(memory_write_ids, dtype=np.int64), [special_ids["cls"]]]
    ).astype(np.int64)
    return {
        "max_seq_length": max_seq_length,
        "before_ids": np.asarray(memory_read_ids, dtype=np.int64),
        "before_types": np.full(m, CONTEXT_TYPE_ID, dtype=np.int64),
        "context_type": CONTEXT_TYPE_ID,
        "after_ids": after_ids,
        "after_types": np.concatenate(
            [[CONTEXT_TYPE_ID], np.full(len(after_ids) - 2, QUESTION_TYPE_ID), [CLS_TYPE_ID]]
        ).astype(np.int64),
        "pad_id": special_ids["pad"],
        "pad_type": CONTEXT_TYPE_ID,
        "pad_left": True,
    }


def template_budget(template: dict) -> int:
    """Context tokens per segment that `template` leaves."""
    return template["max_seq_length"] - len(template["before_ids"]) - len(template["after_ids"])


def build_segments(
    template: dict, context_ids: np.ndarray, context_offsets: np.ndarray, starts: np.ndarray, stops: np.ndarray
) -> dict:
    """Segments of the context windows [starts, stops), vectorised: the template with each window in its slot.

    Returns `input_ids`, `attention_mask`, `token_type_ids` as (windows, max_seq_length) int64 arrays,
    `offset_mapping` as (windows, max_seq_length, 2) int64 with -1 outside the context, and `context_start`, the
    position of each window's first context token. Built on demand, so a long document never holds all its segments.
    """
    length = template["max_seq_length"]
    before, after = template["before_ids"], template["after_ids"]
    starts, stops = np.asarray(starts, dtype=np.int64), np.asarray(stops, dtype=np.int64)
    window = (stops - starts)[:, None]
    content = len(before) + window + len(after)
    first = length - content if template["pad_left"] else np.zeros_like(content)
    relative = np.arange(length)[None, :] - first  # position inside the unpadded segment
    in_before = (relative >= 0) & (relative < len(before))
    in_context = (relative >= len(before)) & (relative < len(before) + window)
    in_after = (relative >= len(before) + window) & (relative < content)
    token = (starts[:, None] + relative - len(before))[in_context]
    after_index = (relative - len(before) - window)[in_after]

    input_ids = np.full(relative.shape, template["pad_id"], dtype=np.int64)
    input_ids[in_before] = before[relative[in_before]]
    input_ids[in_context] = context_ids[token]
    input_ids[in_after] = after[after_index]
    token_type_ids = np.full(relative.shape, template["pad_type"], dtype=np.int64)
    token_type_ids[in_before] = template["before_types"][relative[in_before]]
    token_type_ids[in_context] = template["context_type"]
    token_type_ids[in_after] = template["after_types"][after_index]
    offset_mapping = np.full((*relative.shape, 2), -1, dtype=np.int64)
    offset_mapping[in_context] = context_offsets[token]
    return {
        "input_ids": input_ids,
        "attention_mask": ((relative >= 0) & (relative < content)).astype(np.int64),
        "token_type_ids": token_type_ids,
        "offset_mapping": offset_mapping,
        "context_start": (first + len(before))[:, 0],
    }


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
    template = segment_template(
        question_ids, max_seq_length=max_seq_length, special_ids=special_ids, memory_read_ids=memory_read_ids,
        memory_write_ids=memory_write_ids,
    )
    budget = template_budget(template)
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
    stops = np.minimum(starts + budget, len(context_ids))
    segments = build_segments(template, context_ids, offsets, starts, stops)

    out = {name: segments[name].tolist() for name in ("input_ids", "attention_mask", "token_type_ids")}
    out["offset_mapping"] = []
    for start, stop, context_first in zip(starts.tolist(), stops.tolist(), segments["context_start"].tolist()):
        segment_offsets = [None] * max_seq_length
        segment_offsets[context_first:context_first + stop - start] = offsets[start:stop].tolist()
        out["offset_mapping"].append(segment_offsets)
    out["num_segments"] = len(starts)
    out["num_windows"] = num_windows
    if with_labels:
        cls_index = max_seq_length - 1
        start_labels = np.full(len(starts), cls_index)
        end_labels = np.full(len(starts), cls_index)
        if answer_char_span is not None and len(context_ids):
            answer_start, answer_end = answer_char_span
            first, last = char_span_to_token_span(offsets[:, 0], offsets[:, 1], answer_start, answer_end)
            # A window holds the answer when its tokens cover all of the answer's characters. It may start after
            # `first` when the tokens it cuts off cover no character of its own (SentencePiece's lone "▁" shares the
            # offsets of the piece after it), so the span is clipped to the window.
            first_in_window, last_in_window = np.maximum(first, starts), np.minimum(last, stops - 1)
            inside = (
                (first_in_window <= last_in_window)
                & (offsets[starts, 0] <= answer_start)
                & (offsets[stops - 1, 1] >= answer_end)
            )
            start_labels = np.where(inside, segments["context_start"] + first_in_window - starts, cls_index)
            end_labels = np.where(inside, segments["context_start"] + last_in_window - starts, cls_index)
        out["start_positions"], out["end_positions"] = start_labels.tolist(), end_labels.tolist()
        global_start, global_end = global_span_labels(
            start_labels[None], end_labels[None], np.asarray([len(starts)]), cls_index
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
    special_ids = special_token_ids(tokenizer)
    check_segment_geometry(max_seq_length, doc_stride, len(memory_read_ids), max_query_length)
    question_enc = tokenizer([q.lstrip() for q in questions], add_special_tokens=False)
    # contexts are cut into segments below: their full length is expected (verbose=False: no too-long warning)
    context_enc = tokenizer(list(contexts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
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


# The passes of each `MemXLNetConfig.reading_order` over a document, in order: (direction, use_backward_memory).
READING_PASSES = {
    "forward": (("forward", False),),
    "backward": (("backward", False),),
    "bidirectional": (("backward", True), ("forward", False)),
}


def reading_passes(reading_order: str) -> tuple[tuple[str, bool], ...]:
    """`(direction, use_backward_memory)` of each pass a model with this reading order makes over a document; each pass
    reads every segment once, and a segment's span logits are the sum over passes."""
    if reading_order not in READING_PASSES:
        raise ValueError(f"Unknown reading_order={reading_order!r}. Fix: use one of {', '.join(READING_PASSES)}.")
    return READING_PASSES[reading_order]


def reading_steps(num_segments: int, direction: str) -> list[int]:
    """Segment indices in the order a pass in `direction` (`"forward"` or `"backward"`) reads them."""
    steps = list(range(num_segments))
    return steps[::-1] if direction == "backward" else steps


def last_read_segment(num_segments, reading_order: str = "forward"):
    """Index of the segment a model reads last (in its last pass), the one that has read the whole document through
    that pass's memory; works on ints and arrays of segment counts."""
    direction, _ = reading_passes(reading_order)[-1]
    last = np.asarray(num_segments) - 1
    return last if direction == "forward" else np.zeros_like(last)


def global_span_labels(
    start_positions: np.ndarray,
    end_positions: np.ndarray,
    num_segments: np.ndarray,
    cls_index: int,
    reading_order: str = "forward",
) -> tuple[np.ndarray, np.ndarray]:
    """Document-level targets over the flattened (segments x seq_len) logits, for the global softmax.

    The positive segment is the first one whose start label is not the <cls> index (so single-token answers, where
    start == end, count). Documents without an answer in their first `num_segments` segments target the <cls> of
    the segment read last (`last_read_segment`); the postprocessing reads the null score there too
    (`null_score_reduction="last"`). Arrays have shape (documents, segments).
    """
    seq_len = cls_index + 1
    segments = np.arange(start_positions.shape[1])
    positive = (start_positions != cls_index) & (segments < num_segments[:, None])
    has_answer = positive.any(-1)
    first = positive.argmax(-1)
    rows = np.arange(len(first))
    null_target = last_read_segment(num_segments, reading_order) * seq_len + cls_index
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


def segment_null_scores(start_logits, end_logits, cls_positions) -> np.ndarray:
    """Each segment's no-answer score: the sum of its <cls> start and end logits."""
    rows = np.arange(len(cls_positions))
    return start_logits[rows, cls_positions] + end_logits[rows, cls_positions]


def null_score(start_logits, end_logits, cls_positions, reduction: str, reading_order: str = "forward") -> float:
    """Document null score from the <cls> logits of its segments (in document order).

    `"min"` (per-segment training, as the official `utils_qa`): the segment most sure of an answer decides.
    `"last"` (global-softmax training): the single null target, the <cls> of the segment read last.
    """
    per_segment = segment_null_scores(start_logits, end_logits, cls_positions)
    if reduction == "min":
        return float(per_segment.min())
    if reduction == "last":
        return float(per_segment[last_read_segment(len(per_segment), reading_order)])
    raise ValueError(f"Unknown null_score_reduction={reduction!r}. Fix: use 'min' or 'last'.")


def span_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    context_mask: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> dict[str, np.ndarray]:
    """Every segment's top-k starts x top-k ends, vectorised over segments; each array (segments, k * k).

    `start`/`end` are positions, `start_logit`/`end_logit` their logits and `score` their sum, -inf where the span
    leaves the context, ends before it starts or is longer than `max_answer_length` tokens. Row-major order within a
    segment (better start first, then better end) breaks ties.
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
    shape = (len(scores), k * k)
    return {
        "start": np.broadcast_to(top_starts[:, :, None], scores.shape).reshape(shape),
        "end": np.broadcast_to(top_ends[:, None, :], scores.shape).reshape(shape),
        "start_logit": np.broadcast_to(start_scores[:, :, None], scores.shape).reshape(shape),
        "end_logit": np.broadcast_to(end_scores[:, None, :], scores.shape).reshape(shape),
        "score": np.where(valid, scores, -np.inf).reshape(shape),
    }


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    context_mask: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> list[tuple[int, int, int]]:
    """Top `n_best_size` (segment, start, end) spans of one document, scored by start + end logit.

    Top-k starts x top-k ends per segment (`span_candidates`); spans must lie in the context, with end >= start and
    at most `max_answer_length` tokens. Ties: earlier segment first, then the in-segment order.
    """
    candidates = span_candidates(start_logits, end_logits, context_mask, n_best_size, max_answer_length)
    flat = candidates["score"].reshape(-1)
    order = np.argsort(-flat, kind="stable")[:n_best_size]
    order = order[np.isfinite(flat[order])]
    segments = order // candidates["score"].shape[1]
    starts, ends = candidates["start"].reshape(-1)[order], candidates["end"].reshape(-1)[order]
    return list(zip(segments.tolist(), starts.tolist(), ends.tolist()))


def nbest_answers(
    candidates: list[dict],
    null: float | None,
    null_score_diff_threshold: float = 0.0,
) -> dict:
    """Prediction and n-best list of one document from its best spans (best first) and its null score.

    `candidates` have `text`, `start_logit`, `end_logit`, `start`, `end`; `null` is None without
    `version_2_with_negative`. Returns `prediction` ("" when the null score beats the best span by more than
    `null_score_diff_threshold`), `best_non_null`, `nbest` (entries with `probability`) and `null_odds`.
    """
    if not candidates:
        candidates = [{"text": "", "start_logit": 0.0, "end_logit": 0.0, "start": 0, "end": 0}]
    best = candidates[0]
    entries = list(candidates)
    result = {"prediction": best["text"], "best_non_null": best["text"], "null_odds": None}
    if null is not None:
        entries.append({"text": "", "start_logit": null / 2, "end_logit": null / 2, "start": 0, "end": 0})
        entries.sort(key=lambda entry: entry["start_logit"] + entry["end_logit"], reverse=True)
        score_diff = null - best["start_logit"] - best["end_logit"]
        result["null_odds"] = float(score_diff)
        if score_diff > null_score_diff_threshold:
            result["prediction"] = ""
    scores = np.array([e["start_logit"] + e["end_logit"] for e in entries])
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    result["nbest"] = [
        {**entry, "probability": float(probability)} for entry, probability in zip(entries, probabilities)
    ]
    return result


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
    reading_order: str = "forward",
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
        null = None
        if version_2_with_negative:
            cls_positions = find_cls_positions(np.asarray(feature["input_ids"][:num_segments]), cls_token_id)
            null = null_score(doc_start, doc_end, cls_positions, null_score_reduction, reading_order)
        answers = nbest_answers(candidates, null, null_score_diff_threshold)
        predictions[example_id] = answers["prediction"]
        best_non_null[example_id] = answers["best_non_null"]
        nbest_json[example_id] = answers["nbest"]
        if version_2_with_negative:
            null_odds[example_id] = answers["null_odds"]
    return {"predictions": predictions, "best_non_null": best_non_null, "nbest": nbest_json, "null_odds": null_odds}


__all__ = [
    "best_spans",
    "build_segments",
    "check_segment_geometry",
    "context_budget",
    "global_span_labels",
    "last_read_segment",
    "nbest_answers",
    "postprocess_qa_predictions",
    "prepare_qa_features",
    "reading_passes",
    "reading_steps",
    "segment_document",
    "segment_null_scores",
    "segment_template",
    "span_candidates",
    "special_token_ids",
]
