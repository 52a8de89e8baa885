"""Segmentation with memory tokens, labels, and n-best answer extraction (hf_memory/models/memxlnet/qa_processing)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_memory.models.memxlnet.qa_processing_memxlnet import (
    global_span_labels,
    postprocess_qa_predictions,
    prepare_qa_features,
)
from qa_fixtures import WORDS, tiny_tokenizer

SEQ_LEN, STRIDE = 40, 6


@pytest.fixture(scope="module")
def tokenizer_and_ids(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def segment(tokenizer_and_ids, questions, contexts, answers=None, **kwargs):
    tokenizer, read_ids, write_ids = tokenizer_and_ids
    options = {"max_seq_length": SEQ_LEN, "doc_stride": STRIDE, "max_query_length": 8, "max_n_segs": None}
    options.update(kwargs)
    return prepare_qa_features(
        tokenizer, questions, contexts, answers, memory_read_ids=read_ids, memory_write_ids=write_ids, **options
    )


def test_layout_matches_the_architecture_contract(tokenizer_and_ids):
    tokenizer, read_ids, write_ids = tokenizer_and_ids
    context = " ".join(WORDS * 3)
    rows = segment(tokenizer_and_ids, ["where is alpha?"], [context], max_query_length=16)
    assert rows["num_segments"][0] == rows["num_windows"][0] > 1
    question_ids = tokenizer("where is alpha?", add_special_tokens=False)["input_ids"]
    for ids, types, mask, offsets in zip(
        rows["input_ids"][0], rows["token_type_ids"][0], rows["attention_mask"][0], rows["offset_mapping"][0]
    ):
        assert len(ids) == SEQ_LEN
        first = mask.index(1)
        assert all(token == tokenizer.pad_token_id for token in ids[:first])
        assert ids[first:first + 2] == read_ids
        tail = [tokenizer.sep_token_id, *question_ids, tokenizer.sep_token_id, *write_ids, tokenizer.cls_token_id]
        assert ids[-len(tail):] == tail
        context_positions = [i for i, pair in enumerate(offsets) if pair is not None]
        assert context_positions == list(range(first + 2, SEQ_LEN - len(tail)))
        assert types[first:SEQ_LEN - len(tail) + 1] == [0] * (SEQ_LEN - len(tail) + 1 - first)
        assert types[-len(tail) + 1:-1] == [1] * (len(tail) - 2) and types[-1] == 2
    # consecutive windows overlap by doc_stride context tokens
    starts = [next(pair for pair in seg if pair is not None) for seg in rows["offset_mapping"][0]]
    firsts = [[pair for pair in seg if pair is not None] for seg in rows["offset_mapping"][0]]
    assert firsts[0][-STRIDE:] == firsts[1][:STRIDE] and starts[1] > starts[0]


def test_truncation_to_max_n_segs_keeps_count_of_all_windows(tokenizer_and_ids):
    rows = segment(tokenizer_and_ids, ["q?"], [" ".join(WORDS * 6)], max_n_segs=2)
    assert rows["num_segments"] == [2] and rows["num_windows"][0] > 2
    assert len(rows["input_ids"][0]) == 2


def test_long_question_is_truncated_and_flagged(tokenizer_and_ids):
    rows = segment(tokenizer_and_ids, [" ".join(WORDS)], ["alpha beta"])
    assert rows["question_truncated"] == [True]


def test_impossible_geometry_is_a_clear_error(tokenizer_and_ids):
    with pytest.raises(ValueError, match="doc_stride"):
        segment(tokenizer_and_ids, ["q?"], ["alpha"], doc_stride=30)


def test_answer_outside_kept_segments_gets_cls_labels(tokenizer_and_ids):
    context = " ".join(WORDS * 6) + " zeta"
    answer = {"text": ["zeta"], "answer_start": [context.rindex("zeta")]}
    rows = segment(tokenizer_and_ids, ["q?"], [context], [answer], max_n_segs=2)
    assert rows["start_positions"][0] == [SEQ_LEN - 1] * 2 == rows["end_positions"][0]
    assert rows["global_start_position"] == [2 * SEQ_LEN - 1]  # null target: <cls> of the last segment


def test_global_labels_use_cls_not_start_equals_end():
    # single-token answer (start == end) in segment 1 must be found; documents without answer -> last <cls>
    starts = np.array([[9, 3, 9], [9, 9, 9]])
    ends = np.array([[9, 3, 9], [9, 9, 9]])
    global_start, global_end = global_span_labels(starts, ends, np.array([3, 2]), cls_index=9)
    assert global_start.tolist() == [13, 19] and global_end.tolist() == [13, 19]


def test_window_cutting_off_a_lone_metaspace_token_still_holds_the_answer(tokenizer_and_ids):
    # The tiny tokenizer splits " alphabet" into "▁", "a", ...; "▁" and "a" share the offsets of "a". The second
    # window starts at "a": it covers every character of the answer, so it must label it (found by the fuzz test).
    context = "alpha alpha beta beta alphabet "
    start = context.index("alphabet")
    rows = segment(tokenizer_and_ids, ["which word?"], [context], [{"text": ["alphabet"], "answer_start": [start]}])
    labelled = [(seg, s, e) for seg, (s, e) in enumerate(zip(rows["start_positions"][0], rows["end_positions"][0]))
                if s != SEQ_LEN - 1]
    assert rows["num_segments"][0] == 2 and [seg for seg, _, _ in labelled] == [1]
    _, s, e = labelled[0]
    offsets = rows["offset_mapping"][0][1]
    assert context[offsets[s][0]:offsets[e][1]] == "alphabet"


words = st.lists(st.sampled_from(WORDS + ["alphabet", "be", "ta,"]), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context_words=words, data=st.data(), max_n_segs=st.sampled_from([None, 1, 2, 3]))
def test_fuzz_every_kept_answer_maps_back_to_its_characters(tokenizer_and_ids, context_words, data, max_n_segs):
    separators = data.draw(st.lists(st.sampled_from([" ", "  ", "\n", " \t "]), min_size=len(context_words),
                                    max_size=len(context_words)))
    lead = data.draw(st.sampled_from(["", " ", "  "]))
    context, word_spans = lead, []
    for word, separator in zip(context_words, separators):
        word_spans.append((len(context), len(context) + len(word)))
        context += word + separator
    first = data.draw(st.integers(0, len(word_spans) - 1))
    last = data.draw(st.integers(first, min(first + 3, len(word_spans) - 1)))
    start, end = word_spans[first][0], word_spans[last][1]
    answer = {"text": [context[start:end]], "answer_start": [start]}
    rows = segment(tokenizer_and_ids, ["which word?"], [context], [answer], max_n_segs=max_n_segs)
    found = 0
    for seg, (s, e) in enumerate(zip(rows["start_positions"][0], rows["end_positions"][0])):
        offsets = rows["offset_mapping"][0][seg]
        window = [pair for pair in offsets if pair is not None]
        inside = window[0][0] <= start and window[-1][1] >= end
        assert (s != SEQ_LEN - 1) == inside
        if inside:
            found += 1
            assert context[offsets[s][0]:offsets[e][1]] == answer["text"][0]
    # windows overlap by STRIDE tokens, so any answer of at most STRIDE + 1 tokens is whole in some window
    all_offsets = tokenizer_and_ids[0](context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    answer_tokens = sum(1 for a, b in all_offsets if b > start and a < end)
    if max_n_segs is None and answer_tokens <= STRIDE + 1:
        assert found >= 1


def features_for(rows, example_id):
    return {
        "example_id": example_id,
        "offset_mapping": rows["offset_mapping"][0],
        "input_ids": rows["input_ids"][0],
        "num_segments": rows["num_segments"][0],
    }


def test_postprocessing_finds_the_planted_span_across_segments(tokenizer_and_ids):
    tokenizer = tokenizer_and_ids[0]
    context = " ".join(WORDS * 4)
    rows = segment(tokenizer_and_ids, ["q?"], [context])
    num_segments = rows["num_segments"][0]
    start_logits = np.zeros((1, num_segments, SEQ_LEN))
    end_logits = np.zeros((1, num_segments, SEQ_LEN))
    segment_index = num_segments - 1
    offsets = rows["offset_mapping"][0][segment_index]
    inside = [i for i, pair in enumerate(offsets) if pair is not None]
    a, b = inside[2], inside[4]
    start_logits[0, segment_index, a] = end_logits[0, segment_index, b] = 5.0
    start_logits[0, 0, 0] = end_logits[0, 0, 0] = 50.0  # huge logits on padding / non-context must be ignored
    start_logits[0, 0, 1] = 50.0  # a READ token
    example = {"id": "q1", "context": context}
    result = postprocess_qa_predictions(
        [example], [features_for(rows, "q1")], start_logits, end_logits, cls_token_id=tokenizer.cls_token_id,
        n_best_size=5, max_answer_length=10,
    )
    expected = context[offsets[a][0]:offsets[b][1]]
    assert result["predictions"]["q1"] == expected == result["nbest"]["q1"][0]["text"]
    assert result["null_odds"]["q1"] == pytest.approx(0.0 - 10.0)
    assert abs(sum(entry["probability"] for entry in result["nbest"]["q1"]) - 1) < 1e-9

    # null score from the <cls> logits (last token), min over segments by default
    start_logits[0, :, -1] = end_logits[0, :, -1] = 6.0
    result = postprocess_qa_predictions(
        [example], [features_for(rows, "q1")], start_logits, end_logits, cls_token_id=tokenizer.cls_token_id,
        n_best_size=5, max_answer_length=10,
    )
    assert result["predictions"]["q1"] == "" and result["null_odds"]["q1"] == pytest.approx(2.0)
    assert result["best_non_null"]["q1"] == expected
    relaxed = postprocess_qa_predictions(
        [example], [features_for(rows, "q1")], start_logits, end_logits, cls_token_id=tokenizer.cls_token_id,
        n_best_size=5, max_answer_length=10, null_score_diff_threshold=2.5,
    )
    assert relaxed["predictions"]["q1"] == expected
    # max_answer_length excludes the planted 3-token span
    short = postprocess_qa_predictions(
        [example], [features_for(rows, "q1")], start_logits, end_logits, cls_token_id=tokenizer.cls_token_id,
        n_best_size=5, max_answer_length=2, version_2_with_negative=False,
    )
    assert short["predictions"]["q1"] != expected


def test_span_search_matches_brute_force(tokenizer_and_ids):
    tokenizer = tokenizer_and_ids[0]
    context = " ".join(WORDS * 4)
    rows = segment(tokenizer_and_ids, ["q?"], [context])
    num_segments = rows["num_segments"][0]
    rng = np.random.default_rng(0)
    start_logits, end_logits = rng.normal(size=(2, 1, num_segments, SEQ_LEN))
    result = postprocess_qa_predictions(
        [{"id": "q", "context": context}], [features_for(rows, "q")], start_logits, end_logits,
        cls_token_id=tokenizer.cls_token_id, n_best_size=SEQ_LEN, max_answer_length=4, version_2_with_negative=False,
    )
    best = max(
        (start_logits[0, s, i] + end_logits[0, s, j], s, i, j)
        for s in range(num_segments)
        for i, pi in enumerate(rows["offset_mapping"][0][s])
        for j, pj in enumerate(rows["offset_mapping"][0][s])
        if pi is not None and pj is not None and 0 <= j - i < 4
    )
    _, s, i, j = best
    offsets = rows["offset_mapping"][0][s]
    assert result["predictions"]["q"] == context[offsets[i][0]:offsets[j][1]]


def test_missing_cls_is_a_clear_error(tokenizer_and_ids):
    rows = segment(tokenizer_and_ids, ["q?"], ["alpha beta"])
    rows["input_ids"][0][0][-1] = 7
    with pytest.raises(ValueError, match="<cls>"):
        postprocess_qa_predictions(
            [{"id": "q", "context": "alpha beta"}], [features_for(rows, "q")], np.zeros((1, 1, SEQ_LEN)),
            np.zeros((1, 1, SEQ_LEN)), cls_token_id=tokenizer_and_ids[0].cls_token_id,
        )
