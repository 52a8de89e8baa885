"""pipeline("question-answering"): v4 interface, memory semantics, plain QA models, remote-code checkpoints, run_qa."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForQuestionAnswering,
    BertTokenizer,
    XLNetConfig,
    XLNetForQuestionAnsweringSimple,
    pipeline,
)

from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering, add_memory_tokens
from hf_memory.models.memxlnet import pipeline_question_answering
from hf_memory.models.memxlnet.pipeline_question_answering import MemXLNetQuestionAnsweringPipeline, RunningNBest
from hf_memory.models.memxlnet.qa_processing_memxlnet import (
    best_spans,
    last_read_segment,
    null_score,
    offsets_array,
    postprocess_qa_predictions,
    prepare_qa_features,
    segment_null_scores,
    span_candidates,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

MEMORY_TOKENS = 2
SEGMENTING = {"max_seq_len": 64, "doc_stride": 16, "max_question_len": 16}
RUN_QA_EVAL_SAMPLES = 24


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_memxlnet(tokenizer, memory_num_tokens, seed=0, **overrides):
    read_ids, write_ids = add_memory_tokens(tokenizer, memory_num_tokens) if memory_num_tokens else (None, None)
    config = MemXLNetConfig(
        vocab_size=len(tokenizer), d_model=32, n_layer=2, n_head=2, d_inner=64, memory_num_tokens=memory_num_tokens,
        mem_read_token_ids=read_ids, mem_write_token_ids=write_ids, pad_token_id=tokenizer.pad_token_id, **overrides,
    )
    torch.manual_seed(seed)
    return MemXLNetForQuestionAnswering(config).eval()


@pytest.fixture(scope="module")
def squad_examples(squad_small_file):
    payload = json.loads(squad_small_file.read_text())
    return [
        {"id": qa["id"], "question": qa["question"], "context": paragraph["context"]}
        for article in payload["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]
    ]


@pytest.fixture(scope="module")
def memory_checkpoint(tmp_path_factory, xlnet_tokenizer_dir):
    """A saved MemXLNet QA checkpoint with memory (model files, tokenizer with memory tokens)."""
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    model = tiny_memxlnet(tokenizer, MEMORY_TOKENS)
    directory = tmp_path_factory.mktemp("memxlnet_qa")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def reading_checkpoint(tmp_path_factory, xlnet_tokenizer_dir, reading_order):
    """A memory checkpoint reading documents in `reading_order`, null score at the segment read last."""
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    model = tiny_memxlnet(tokenizer, MEMORY_TOKENS, seed=1, reading_order=reading_order, null_score_reduction="last")
    directory = tmp_path_factory.mktemp(f"memxlnet_qa_{reading_order}")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def backward_checkpoint(tmp_path_factory, xlnet_tokenizer_dir):
    return reading_checkpoint(tmp_path_factory, xlnet_tokenizer_dir, "backward")


@pytest.fixture(scope="module")
def bidirectional_checkpoint(tmp_path_factory, xlnet_tokenizer_dir):
    return reading_checkpoint(tmp_path_factory, xlnet_tokenizer_dir, "bidirectional")


@pytest.fixture(scope="module")
def memory_pipe(memory_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(memory_checkpoint)
    model = MemXLNetForQuestionAnswering.from_pretrained(memory_checkpoint).eval()
    return MemXLNetQuestionAnsweringPipeline(model=model, tokenizer=tokenizer, device=-1)


@pytest.fixture(scope="module")
def long_examples(squad_examples):
    """Questions whose contexts span 1 to about 10 segments of 64 tokens."""
    by_length = sorted({example["context"]: example for example in squad_examples}.values(), key=lambda e: len(e["context"]))
    return [by_length[0], by_length[len(by_length) // 2], by_length[-1], by_length[-2], by_length[5]]


def test_checkpoint_declares_and_ships_the_pipeline(memory_checkpoint):
    config = json.loads((memory_checkpoint / "config.json").read_text())
    assert config["custom_pipelines"]["question-answering"] == {
        "impl": "pipeline_question_answering.MemXLNetQuestionAnsweringPipeline",
        "pt": ["AutoModelForQuestionAnswering"],
    }
    assert config["auto_map"]["AutoModelForQuestionAnswering"] == "modeling_memxlnet.MemXLNetForQuestionAnswering"
    for name in ("pipeline_question_answering.py", "qa_processing_memxlnet.py", "modeling_memxlnet.py"):
        assert (memory_checkpoint / name).is_file(), name


def test_default_segment_length_ignores_xlnets_unbounded_positions(memory_pipe, squad_examples):
    """XLNet's config has max_position_embeddings = -1 (relative positions); the default segment is then 384 tokens,
    bounded only by the tokenizer, as the v4 pipeline's default."""
    example = squad_examples[0]
    assert memory_pipe.model.config.max_position_embeddings == -1
    expected = min(memory_pipe.tokenizer.model_max_length, 384)
    question, context = example["question"], example["context"] * 4
    answer = memory_pipe(question=question, context=context, top_k=2)
    assert answer == memory_pipe(question=question, context=context, top_k=2, max_seq_len=expected)


def test_v4_calling_conventions_agree(memory_pipe, squad_examples):
    first, second = squad_examples[0], squad_examples[1]
    options = {**SEGMENTING, "handle_impossible_answer": True}
    single = memory_pipe(question=first["question"], context=first["context"], **options)
    assert set(single) == {"score", "start", "end", "answer"}
    pair = {"question": first["question"], "context": first["context"]}
    assert memory_pipe(pair, **options) == single
    assert memory_pipe(X=pair, **options) == single
    assert memory_pipe(data=pair, **options) == single
    assert memory_pipe(first["question"], first["context"], **options) == single
    both = [pair, {"question": second["question"], "context": second["context"]}]
    listed = memory_pipe(both, **options)
    assert listed == memory_pipe(question=[e["question"] for e in both], context=[e["context"] for e in both], **options)
    assert listed[0] == single and len(listed) == 2
    shared_context = memory_pipe(question=[first["question"], second["question"]], context=first["context"], **options)
    assert shared_context[0] == single
    assert list(memory_pipe(iter(both), **options)) == listed
    top = memory_pipe(pair, top_k=3, **options)
    assert isinstance(top, list) and len(top) == 3 and top[0] == single
    assert len({(answer["start"], answer["end"]) for answer in top}) == 3


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        ({"question": "", "context": "Paris is in France."}, "question"),
        ({"question": "Where?", "context": ""}, "context"),
        ({"question": "Where?", "context": " \n\t "}, "context"),
        ({"question": "Where?", "context": "Paris is in France.", "top_k": 0}, "top_k"),
        ({"question": "Where is the capital city of France?", "context": "Paris.", "max_seq_len": 12}, "max_seq_len"),
        ({"question": "Where?", "context": "Paris is in France.", "max_seq_len": 32, "doc_stride": 30}, "doc_stride"),
        ({"question": ["Where?", "Who?"], "context": ["Paris."]}, "contexts"),
        ({"question": "Where?"}, "context"),
    ],
)
def test_bad_input_names_the_argument(memory_pipe, call, argument):
    with pytest.raises(ValueError, match=argument):
        memory_pipe(**call)


def assert_same_answers(got, want):
    """Same spans; scores equal up to float noise (batched and single-row matmuls round differently)."""
    got, want = (got if isinstance(got, list) else [got]), (want if isinstance(want, list) else [want])
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in want]
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in want], abs=1e-5)


def manual_memory_logits(model, tokenizer, example, carry_memory=True):
    """Reference: the documented segment layout, one segment at a time in the model's reading order (bidirectional:
    backward with the second memory, then forward, span logits summed), one document at a time; logits in document
    order."""
    rows = prepare_qa_features(
        tokenizer, [example["question"]], [example["context"]], max_seq_length=SEGMENTING["max_seq_len"],
        doc_stride=SEGMENTING["doc_stride"], max_query_length=SEGMENTING["max_question_len"],
        memory_read_ids=model.config.mem_read_token_ids, memory_write_ids=model.config.mem_write_token_ids,
    )
    segments = list(zip(rows["input_ids"][0], rows["attention_mask"][0], rows["token_type_ids"][0]))
    forward, backward = range(len(segments)), range(len(segments) - 1, -1, -1)
    passes = {"forward": [(forward, False)], "backward": [(backward, False)],
              "bidirectional": [(backward, True), (forward, False)]}[model.config.reading_order]
    start, end = 0, 0
    for order, use_backward_memory in passes:
        memory, starts, ends = None, [None] * len(segments), [None] * len(segments)
        with torch.no_grad():
            for index in order:
                ids, mask, types = segments[index]
                out = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask]),
                            token_type_ids=torch.tensor([types]), memory_state=memory if carry_memory else None,
                            use_backward_memory=use_backward_memory)
                memory = out.memory_state
                starts[index], ends[index] = out.start_logits[0], out.end_logits[0]
        start, end = start + torch.stack(starts), end + torch.stack(ends)
    return start, end, rows


def logits_per_document(pipe, documents, batch_size):
    """Reassemble each document's (segments, seq_len) logits from the pipeline's pass-by-pass stream."""
    starts = [[None] * document["num_segments"] for document in documents]
    ends = [[None] * document["num_segments"] for document in documents]
    with torch.no_grad():
        for rows, start, end, _ in pipe.segment_logits(documents, batch_size):
            for (index, segment), start_row, end_row in zip(rows, start, end):
                starts[index][segment], ends[index][segment] = start_row, end_row
    return [torch.stack(s) for s in starts], [torch.stack(e) for e in ends]


def test_documents_batched_time_step_major_carry_their_own_memory(memory_pipe, long_examples):
    model, tokenizer = memory_pipe.model, memory_pipe.tokenizer
    documents = [memory_pipe.preprocess(example, **SEGMENTING) for example in long_examples]
    lengths = [document["num_segments"] for document in documents]
    assert max(lengths) >= 5 and min(lengths) <= 2 and len(set(lengths)) >= 3
    starts, ends = logits_per_document(memory_pipe, documents, batch_size=len(documents))
    for example, start, end in zip(long_examples, starts, ends):
        reference_start, reference_end, _ = manual_memory_logits(model, tokenizer, example)
        torch.testing.assert_close(start, reference_start, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(end, reference_end, atol=1e-5, rtol=1e-5)
        if len(start) > 1:  # memory reaches later segments: without it their logits differ
            forgetful_start, _, _ = manual_memory_logits(model, tokenizer, example, carry_memory=False)
            assert (forgetful_start[1:] - start[1:]).abs().max() > 1e-4


@pytest.mark.parametrize("checkpoint", ["backward_checkpoint", "bidirectional_checkpoint"])
def test_backward_and_bidirectional_reading_carry_memory_from_later_segments(checkpoint, long_examples, request):
    """reading_order="backward": the last segment is read first (memory has nothing to add to it) and every earlier
    segment reads what the later ones wrote; "bidirectional" adds a forward pass with the first memory, so every
    segment hears from both sides. Batched documents of different lengths each start at their own end."""
    checkpoint = request.getfixturevalue(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = MemXLNetForQuestionAnswering.from_pretrained(checkpoint).eval()
    pipe = MemXLNetQuestionAnsweringPipeline(model=model, tokenizer=tokenizer, device=-1)
    documents = [pipe.preprocess(example, **SEGMENTING) for example in long_examples]
    assert len({document["num_segments"] for document in documents}) >= 3
    starts, ends = logits_per_document(pipe, documents, batch_size=len(documents))
    for example, start, end in zip(long_examples, starts, ends):
        reference_start, reference_end, _ = manual_memory_logits(model, tokenizer, example)
        torch.testing.assert_close(start, reference_start, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(end, reference_end, atol=1e-5, rtol=1e-5)
        forgetful_start, _, _ = manual_memory_logits(model, tokenizer, example, carry_memory=False)
        changed = (forgetful_start - start).abs().amax(-1) > 1e-4
        if model.config.reading_order == "backward":  # only segments read after another one change
            assert changed.tolist() == [True] * (len(start) - 1) + [False]
        else:
            assert changed.all() or len(start) == 1


def test_segments_built_per_pass_equal_prepare_qa_features(memory_pipe, long_examples):
    """The pipeline keeps only the context's token arrays; the segments it builds are run_qa.py's, exactly."""
    config, tokenizer = memory_pipe.model.config, memory_pipe.tokenizer
    documents = [memory_pipe.preprocess(example, **SEGMENTING) for example in long_examples]
    assert set(documents[0]) >= {"context_ids", "context_offsets", "word_ids", "window_starts"}
    assert "input_ids" not in documents[0] and documents[0]["context_ids"].dtype == np.int32
    rows = [(index, segment) for index, document in enumerate(documents) for segment in range(document["num_segments"])]
    built = memory_pipe._segments(documents, rows)
    expected = prepare_qa_features(
        tokenizer, [e["question"] for e in long_examples], [e["context"] for e in long_examples],
        max_seq_length=SEGMENTING["max_seq_len"], doc_stride=SEGMENTING["doc_stride"],
        max_query_length=SEGMENTING["max_question_len"], memory_read_ids=config.mem_read_token_ids,
        memory_write_ids=config.mem_write_token_ids,
    )
    assert [d["num_segments"] for d in documents] == expected["num_segments"]
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(built[name], np.concatenate(expected[name]))
    np.testing.assert_array_equal(
        built["offset_mapping"], np.concatenate([offsets_array(o) for o in expected["offset_mapping"]])
    )


@pytest.mark.parametrize("reading_order", ["forward", "backward"])
@pytest.mark.parametrize("reduction", ["min", "last"])
def test_running_nbest_equals_best_spans_over_all_segments(reading_order, reduction):
    """Merging segments' candidates pass by pass, in either reading order, keeps exactly the spans best_spans picks
    at once, ties included, and the null score run_qa's postprocessing reads."""
    rng = np.random.default_rng(0)
    start, end = rng.integers(-3, 3, (9, 24)).astype(np.float64), rng.integers(-3, 3, (9, 24)).astype(np.float64)
    mask = rng.random((9, 24)) > 0.3
    cls = rng.integers(0, 24, 9)
    expected = best_spans(start, end, mask, 20, 5)
    candidates = span_candidates(start, end, mask, 20, 5)
    candidates["segment"] = np.broadcast_to(np.arange(9)[:, None], candidates["score"].shape)
    nulls = segment_null_scores(start, end, cls)
    running = RunningNBest(20, reduction, int(last_read_segment(9, reading_order)))
    parts = [slice(0, 1), slice(1, 4), slice(4, 5), slice(5, 9)]
    for part in parts if reading_order == "forward" else parts[::-1]:
        running.update({name: value[part] for name, value in candidates.items()}, nulls[part])
    finite = np.isfinite(running.kept["score"])
    got = zip(*(running.kept[name][finite].tolist() for name in ("segment", "start", "end")))
    assert list(got) == expected and len(expected) == 20
    assert running.null == null_score(start, end, cls, reduction, reading_order)
    assert reduction == "min" or running.null == nulls[8 if reading_order == "forward" else 0]


@pytest.mark.parametrize("piece_chars", [40, 1 << 14])
def test_context_tokenized_in_pieces_equals_whole_encoding(memory_pipe, squad_examples, monkeypatch, piece_chars):
    monkeypatch.setattr(pipeline_question_answering, "CONTEXT_PIECE_CHARS", piece_chars)
    for context in {example["context"] for example in squad_examples[:60]}:
        whole = memory_pipe._encode(context)
        pieces = memory_pipe._tokenize_context(context)
        for got, want in zip((pieces["context_ids"], pieces["context_offsets"], pieces["word_ids"]), whole):
            np.testing.assert_array_equal(got, want)
    assert bool(list(memory_pipe._cuts(context))) == (len(context) > piece_chars)  # cuts happen in long texts


def test_pieces_stay_whole_where_a_cut_would_change_tokens(memory_pipe, monkeypatch):
    """A normalizer that prepends to every text makes cuts visible: the check refuses them, the result stays exact."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[UNK]", "[PAD]", "[CLS]", "[SEP]", "#", "#a", "a", "b", "c"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Prepend("#")
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    pipe = MemXLNetQuestionAnsweringPipeline(model=memory_pipe.model, tokenizer=tokenizer, device=-1)
    monkeypatch.setattr(pipeline_question_answering, "CONTEXT_PIECE_CHARS", 3)
    context = "a b c " * 20
    assert list(pipe._cuts(context)) == []
    pieces = pipe._tokenize_context(context)
    np.testing.assert_array_equal(pieces["context_ids"], pipe._encode(context)[0])


def test_memory_does_not_grow_with_the_number_of_segments(memory_pipe, long_examples, monkeypatch):
    """Peak Python/numpy allocations of one call grow with the document by about its int32 token arrays (16 bytes a
    token, twice that while the tokenized pieces are joined, plus small text copies); keeping every segment's
    features and logits cost about 930 bytes a token."""
    import tracemalloc

    monkeypatch.setattr(pipeline_question_answering, "CONTEXT_PIECE_CHARS", 2048)  # both documents in pieces
    contexts = " ".join(example["context"] for example in long_examples)
    memory_pipe(long_examples[0], **SEGMENTING)  # warm-up
    peaks, tokens, segments = [], [], []
    for repeats in (3, 12):
        example = {"question": long_examples[0]["question"], "context": " ".join([contexts] * repeats)}
        tracemalloc.start()
        memory_pipe(example, **SEGMENTING, handle_impossible_answer=True, top_k=3)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        document = memory_pipe.preprocess(example, **SEGMENTING)
        tokens.append(len(document["context_ids"]))
        segments.append(document["num_segments"])
    assert segments[1] > 3 * segments[0] > 100
    assert (peaks[1] - peaks[0]) / (tokens[1] - tokens[0]) < 48, (segments, tokens, peaks)


def test_answers_match_run_qa_postprocessing_and_batching(memory_pipe, long_examples):
    options = {**SEGMENTING, "handle_impossible_answer": True, "max_answer_len": 30, "align_to_words": False}
    answers = memory_pipe(long_examples, batch_size=3, **options)
    for answer, example in zip(answers, long_examples):  # batching changes nothing
        assert_same_answers(answer, memory_pipe(example, **options))
    for example, answer in zip(long_examples, answers):
        start, end, rows = manual_memory_logits(memory_pipe.model, memory_pipe.tokenizer, example)
        feature = {"example_id": "q", "input_ids": rows["input_ids"][0], "offset_mapping": rows["offset_mapping"][0],
                   "num_segments": rows["num_segments"][0]}
        expected = postprocess_qa_predictions(
            [{"id": "q", "context": example["context"]}], [feature], start.numpy()[None], end.numpy()[None],
            cls_token_id=memory_pipe.tokenizer.cls_token_id, max_answer_length=30,
        )
        assert answer["answer"] == expected["predictions"]["q"]
        assert answer["answer"] == example["context"][answer["start"]:answer["end"]]


def test_align_to_words_widens_answers_to_whole_words(memory_pipe, long_examples):
    for example in long_examples:
        for answer in memory_pipe(example, top_k=5, **SEGMENTING):
            context, start, end = example["context"], answer["start"], answer["end"]
            assert answer["answer"] == context[start:end] and end > start
            assert start == 0 or not context[start - 1].isalnum() or not context[start].isalnum()
            assert end == len(context) or not context[end].isalnum() or not context[end - 1].isalnum()


def brute_force_answer(model, encoded, context_masks, offsets, context, handle_impossible, cls_index, max_len):
    """Reference for chunk-independent models: every (start, end) pair of every segment, scored by logits."""
    with torch.no_grad():
        out = model(**encoded)
    start, end = out.start_logits.numpy(), out.end_logits.numpy()
    best_score, best_span = -np.inf, (0, 0)
    for s in range(len(start)):
        positions = np.flatnonzero(context_masks[s])
        for a in positions:
            for b in positions[(positions >= a) & (positions < a + max_len)]:
                if start[s, a] + end[s, b] > best_score:
                    best_score, best_span = start[s, a] + end[s, b], (offsets[s][a][0], offsets[s][b][1])
    null = min(start[s, cls_index] + end[s, cls_index] for s in range(len(start)))
    if handle_impossible and null > best_score:
        return ""
    return context[best_span[0]:best_span[1]]


def plain_models(xlnet_tokenizer_dir, squad_examples):
    xlnet_tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    torch.manual_seed(0)
    xlnet = XLNetForQuestionAnsweringSimple(
        XLNetConfig(vocab_size=len(xlnet_tokenizer), d_model=32, n_layer=2, n_head=2, d_inner=64)
    ).eval()
    words = Counter(w for e in squad_examples[:300] for w in re.findall(r"\w+|[^\w\s]", e["context"].lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(1500)]
    bert_tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    bert = BertForQuestionAnswering(
        BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=128)
    ).eval()
    return {"xlnet": (xlnet, xlnet_tokenizer), "bert": (bert, bert_tokenizer)}


@pytest.mark.parametrize("family", ["xlnet", "bert"])
def test_plain_qa_models_get_chunk_independent_inference(family, xlnet_tokenizer_dir, squad_examples, long_examples):
    model, tokenizer = plain_models(xlnet_tokenizer_dir, squad_examples)[family]
    pipe = MemXLNetQuestionAnsweringPipeline(model=model, tokenizer=tokenizer, device=-1)
    question_first = tokenizer.padding_side == "right"
    for example in long_examples[:3]:
        for handle_impossible in (False, True):
            answer = pipe(example, handle_impossible_answer=handle_impossible, align_to_words=False, batch_size=4,
                          max_answer_len=15, max_seq_len=64, doc_stride=16)
            pair = (example["question"], example["context"])
            encoded = tokenizer(*(pair if question_first else pair[::-1]), truncation="only_second" if question_first
                                else "only_first", max_length=64, stride=16, return_overflowing_tokens=True,
                                return_offsets_mapping=True, return_token_type_ids=True, padding="max_length",
                                return_tensors="pt")
            context_index = 1 if question_first else 0
            masks = [[sid == context_index for sid in encoded.sequence_ids(i)] for i in range(len(encoded["input_ids"]))]
            cls_index = 0 if family == "bert" else 63  # BERT: [CLS] first; XLNet: <cls> last, left padding
            assert encoded["input_ids"][0, cls_index] == tokenizer.cls_token_id
            offsets = encoded.pop("offset_mapping").tolist()
            encoded.pop("overflow_to_sample_mapping", None)
            expected = brute_force_answer(model, dict(encoded), masks, offsets, example["context"], handle_impossible,
                                          cls_index, 15)
            assert answer["answer"] == expected
        # the segments the pipeline builds from the tokenizer's template are the tokenizer's overflowing windows
        document = pipe.preprocess(example, max_seq_len=64, doc_stride=16)
        segments = pipe._segments([document], [(0, segment) for segment in range(document["num_segments"])])
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(segments[name], encoded[name].numpy())
        np.testing.assert_array_equal(segments["offset_mapping"], np.where(np.array(masks)[..., None], offsets, -1))


def test_memxlnet_without_memory_is_chunk_independent(xlnet_tokenizer_dir, long_examples):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    model = tiny_memxlnet(tokenizer, 0)
    pipe = MemXLNetQuestionAnsweringPipeline(model=model, tokenizer=tokenizer, device=-1)
    document = pipe.preprocess(long_examples[2], **SEGMENTING)
    starts, _ = logits_per_document(pipe, [document], batch_size=2)
    segments = pipe._segments([document], [(0, segment) for segment in range(document["num_segments"])])
    with torch.no_grad():
        reference = model(**pipe._model_inputs(segments)).start_logits
    torch.testing.assert_close(starts[0], reference, atol=1e-5, rtol=1e-5)
    assert (segments["input_ids"][:, -1] == tokenizer.cls_token_id).all()  # <cls> last, as XLNet


def test_plain_model_saved_through_the_pipeline_loads_with_pipeline(tmp_path, xlnet_tokenizer_dir, squad_examples):
    model, tokenizer = plain_models(xlnet_tokenizer_dir, squad_examples)["bert"]
    pipe = MemXLNetQuestionAnsweringPipeline(model=model, tokenizer=tokenizer, device=-1)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "pipeline_question_answering.py").is_file()
    loaded = pipeline("question-answering", model=str(tmp_path), trust_remote_code=True, device=-1)
    example = squad_examples[3]
    assert_same_answers(loaded(example, top_k=2), pipe(example, top_k=2))


def test_second_pipeline_call_and_resave_after_clean_custom_task(memory_checkpoint, tmp_path, squad_examples):
    """transformers' clean_custom_task turns config.custom_pipelines names into classes in place; the pipeline undoes it."""
    model = MemXLNetForQuestionAnswering.from_pretrained(memory_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(memory_checkpoint)
    answers = []
    for _ in range(2):
        pipe = pipeline("question-answering", model=model, tokenizer=tokenizer, config=model.config,
                        pipeline_class=MemXLNetQuestionAnsweringPipeline, device=-1)
        answers.append(pipe(squad_examples[0], **SEGMENTING))
    assert_same_answers(*answers)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]["question-answering"]
    assert saved["pt"] == ["AutoModelForQuestionAnswering"]


FRESH_PROCESS = r"""
import json, sys
sys.modules["hf_memory"] = None  # the package must not be needed
from transformers import pipeline
folder, examples = sys.argv[1], json.loads(sys.argv[2])
pipe = pipeline("question-answering", model=folder, trust_remote_code=True, device=-1)
answers = pipe(examples, max_seq_len=64, doc_stride=16, max_question_len=16, handle_impossible_answer=True)
again = pipeline("question-answering", model=folder, trust_remote_code=True, device=-1)
assert again(examples, max_seq_len=64, doc_stride=16, max_question_len=16, handle_impossible_answer=True) == answers
print(json.dumps({"class": type(pipe).__module__, "model": type(pipe.model).__name__, "answers": answers}))
"""


def test_loads_with_pipeline_in_a_fresh_process_without_hf_memory(memory_checkpoint, memory_pipe, long_examples,
                                                                  tmp_path):
    examples = [{"question": e["question"], "context": e["context"]} for e in long_examples]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(memory_checkpoint), json.dumps(examples)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["class"].startswith("transformers_modules.")
    expected = memory_pipe(examples, **SEGMENTING, handle_impossible_answer=True)
    for got, want in zip(payload["answers"], expected):
        assert_same_answers(got, want)


@pytest.mark.parametrize("checkpoint", ["memory_checkpoint", "backward_checkpoint", "bidirectional_checkpoint"])
def test_pipeline_equals_run_qa_eval_predictions(checkpoint, squad_small_file, squad_examples, tmp_path, request):
    checkpoint = request.getfixturevalue(checkpoint)
    output_dir = tmp_path / "run_qa"
    command = [
        sys.executable, str(REPO_ROOT / "run_qa.py"), "--model_name_or_path", str(checkpoint),
        "--validation_file", str(squad_small_file), "--do_eval", "--version_2_with_negative",
        "--max_eval_samples", str(RUN_QA_EVAL_SAMPLES), "--max_seq_length", "64", "--doc_stride", "16",
        "--max_query_length", "16", "--max_answer_length", "30", "--n_best_size", "20",
        "--per_device_eval_batch_size", "4", "--output_dir", str(output_dir), "--use_cpu", "True",
        "--report_to", "none",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "TRANSFORMERS_VERBOSITY": "error",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    expected = json.loads((output_dir / "eval_predictions.json").read_text())
    assert len(expected) == RUN_QA_EVAL_SAMPLES and any(expected.values())
    pipe = pipeline("question-answering", model=str(checkpoint), trust_remote_code=True, device=-1)
    examples = [example for example in squad_examples if example["id"] in expected]
    answers = pipe(examples, max_seq_len=64, doc_stride=16, max_question_len=16, max_answer_len=30,
                   handle_impossible_answer=True, align_to_words=False, batch_size=4)
    assert {example["id"]: answer["answer"] for example, answer in zip(examples, answers)} == expected


def test_gmm_checkpoint_answers_through_the_shipped_pipeline(tmp_path, xlnet_tokenizer_dir, long_examples):
    """GMMXLNet checkpoints ship the same pipeline; in a process without hf_memory it gives the in-process answers."""
    from hf_memory import GMMXLNetForQuestionAnswering, gmm_small_config

    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    read_ids, write_ids = add_memory_tokens(tokenizer, MEMORY_TOKENS)
    torch.manual_seed(0)
    model = GMMXLNetForQuestionAnswering(gmm_small_config(
        vocab_size=len(tokenizer), d_model=32, n_layer=1, n_head=2, d_inner=64, memory_num_tokens=MEMORY_TOKENS,
        mem_read_token_ids=read_ids, mem_write_token_ids=write_ids, pad_token_id=tokenizer.pad_token_id,
    )).eval()
    model.save_pretrained(tmp_path / "gmm")
    tokenizer.save_pretrained(tmp_path / "gmm")
    examples = [{"question": e["question"], "context": e["context"]} for e in long_examples[:3]]
    expected = MemXLNetQuestionAnsweringPipeline(model=model, tokenizer=tokenizer, device=-1)(
        examples, **SEGMENTING, handle_impossible_answer=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "gmm"), json.dumps(examples)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["model"] == "GMMXLNetForQuestionAnswering"
    for got, want in zip(payload["answers"], expected):
        assert_same_answers(got, want)
