"""Extractive question answering over long documents, shipped next to the weights of every MemXLNet checkpoint.

transformers 5.23 removed `QuestionAnsweringPipeline`; `pipeline("question-answering", model=<checkpoint>,
trust_remote_code=True)` still resolves a class named in `config.custom_pipelines`, which is this one. Memory models
read each document segment by segment, carrying `memory_state`, several documents batched time-step-major. Plain
extractive QA models (XLNet, BERT-style, `memory_num_tokens=0`) get chunk-independent inference as in transformers
v4, so the class is also a drop-in replacement for the removed pipeline. Segmentation and answer selection are the
functions `run_qa.py` evaluation uses (`qa_processing_memxlnet`), so both give the same answers.

Memory does not grow with the number of segments: a document is kept as its context's token ids, character offsets
and word ids (int32 arrays), each forward pass builds its segments from them, and the logits are reduced at once to
the document's running n-best spans and null score.
"""

import inspect
import re
from collections.abc import Iterable, Iterator
from itertools import groupby, islice
from operator import itemgetter

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, Pipeline

from .qa_processing_memxlnet import (
    build_segments,
    find_cls_positions,
    last_read_segment,
    nbest_answers,
    reading_passes,
    segment_null_scores,
    segment_template,
    span_candidates,
    special_token_ids,
    template_budget,
    window_starts,
)

# Documents preprocessed together and sorted by length, so that a batch holds documents of similar length and few
# rows of a time step are idle.
SORT_WINDOW_BATCHES = 16
DEFAULT_MAX_QUESTION_LEN = 64
DEFAULT_MAX_ANSWER_LEN = 15
DEFAULT_N_BEST_SIZE = 20
SEGMENT_ARRAYS = ("input_ids", "attention_mask", "token_type_ids", "offset_mapping")
# Contexts are tokenized in pieces of about this many characters, cut before whitespace: the tokenizer's encoding
# (token strings, alignments: some 300 bytes per token) then stays small however long the document is.
CONTEXT_PIECE_CHARS = 1 << 14
# Characters each side of a cut that are tokenized whole and in two parts, to check that the cut changes no token.
CUT_CHECK_CHARS = 256
CUT_BEFORE_WHITESPACE = re.compile(r"(?<=\S)\s")


def _restore_custom_pipeline_names(config):
    """Undo transformers' `clean_custom_task`, which replaces the names in `config.custom_pipelines` by classes.

    Left as classes, a second `pipeline(...)` call on the same config raises a TypeError and `save_pretrained`
    cannot serialise the config.
    """
    for spec in (getattr(config, "custom_pipelines", None) or {}).values():
        model_classes = spec.get("pt", ())
        model_classes = [model_classes] if isinstance(model_classes, (str, type)) else model_classes
        spec["pt"] = [cls if isinstance(cls, str) else cls.__name__ for cls in model_classes]
        implementation = spec.get("impl")
        if isinstance(implementation, type):
            spec["impl"] = f"{implementation.__module__.rsplit('.', 1)[-1]}.{implementation.__name__}"


def _check_text(value, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"`{name}` must be a string, got {type(value).__name__}. Fix: pass {name}=<text>.")
    if not value.strip():
        what = "empty" if not value else "only whitespace"
        raise ValueError(f"`{name}` is {what}. Fix: pass a non-empty {name}.")
    return value


def _as_example(item) -> dict:
    if not isinstance(item, dict) or "question" not in item or "context" not in item:
        raise ValueError(
            f"Each input must be a dict with 'question' and 'context' keys, got {item!r:.80}. "
            "Fix: call pipe(question=..., context=...) or pipe({'question': ..., 'context': ...})."
        )
    return {"question": _check_text(item["question"], "question"), "context": _check_text(item["context"], "context")}


def normalize_qa_inputs(args: tuple, kwargs: dict) -> tuple[Iterable[dict] | list[dict], bool]:
    """The v4 calling conventions -> (examples, single). Pops the input arguments from `kwargs`.

    Accepts `question=`/`context=` (strings or lists; one context is shared by a list of questions), one or a list of
    `{"question", "context"}` dicts (positional, `X=` or `data=`), `(question, context)` as two positional strings,
    and generators or datasets of dicts (answered lazily).
    """
    question, context = kwargs.pop("question", None), kwargs.pop("context", None)
    legacy = [kwargs.pop(name) for name in ("X", "data") if name in kwargs]
    if question is not None or context is not None:
        if question is None or context is None:
            missing = "context" if context is None else "question"
            raise ValueError(f"`{missing}` is missing. Fix: pass both question=... and context=....")
        if isinstance(question, str) and isinstance(context, str):
            return [_as_example({"question": question, "context": context})], True
        questions = [question] if isinstance(question, str) else list(question)
        contexts = [context] * len(questions) if isinstance(context, str) else list(context)
        if len(questions) != len(contexts):
            raise ValueError(
                f"Got {len(questions)} questions but {len(contexts)} contexts. Fix: pass lists of equal length or "
                "one context string for all questions."
            )
        return [_as_example({"question": q, "context": c}) for q, c in zip(questions, contexts)], False
    inputs = list(args) + legacy
    if len(inputs) == 2 and all(isinstance(item, str) for item in inputs):
        return [_as_example({"question": inputs[0], "context": inputs[1]})], True
    if len(inputs) != 1:
        raise ValueError(
            "Pass the inputs once: question=... and context=..., or one dict / list of dicts "
            f"(got {len(inputs)} positional or X/data arguments)."
        )
    inputs = inputs[0]
    if isinstance(inputs, dict):
        return [_as_example(inputs)], True
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise ValueError("Got an empty list of inputs. Fix: pass at least one {'question', 'context'} dict.")
        return [_as_example(item) for item in inputs], False
    if isinstance(inputs, Iterable) and not isinstance(inputs, str):
        return (_as_example(item) for item in inputs), False
    raise ValueError(
        f"Unsupported input {inputs!r:.80}. Fix: call pipe(question=..., context=...) or pass {{'question', "
        "'context'}} dicts."
    )


def _join_pieces(pieces: list[tuple], starts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate the (ids, offsets, word ids) of consecutive text pieces starting at characters `starts`; shifts
    the pieces' offsets and word ids in place, so that joining needs no more than the result's memory."""
    first_word = 0
    for (_, offsets, words), start in zip(pieces, starts):
        offsets += start
        words += first_word
        first_word += len(np.unique(words))
    return tuple(np.concatenate(column) for column in zip(*pieces))


class RunningNBest:
    """The best spans and the null score of one document so far, updated segment by segment in O(n_best) memory.

    Each update merges new segments' candidates (`span_candidates` plus their `segment` index) with the kept ones,
    ordered by score, then segment, then place in the segment: the spans are exactly those `best_spans` picks from
    the logits of all segments at once, ties included, in whatever order the segments are read. The null score is the
    minimum over segments (`"min"`) or that of `last_read_segment` (`"last"`).
    """

    def __init__(self, size: int, null_score_reduction: str | None, last_read_segment: int | None = None):
        self.size, self.null_score_reduction, self.last_read_segment = size, null_score_reduction, last_read_segment
        self.kept: dict[str, np.ndarray] | None = None
        self.null: float | None = None

    def update(self, candidates: dict[str, np.ndarray], null_scores: np.ndarray | None = None):
        """Add the candidates of some segments (arrays of shape (segments, k * k), `segment` among them) and their
        no-answer scores (`segment_null_scores`, shape (segments,))."""
        flat = {name: value.reshape(-1) for name, value in candidates.items()}
        flat["rank"] = np.broadcast_to(np.arange(candidates["score"].shape[-1]), candidates["score"].shape).reshape(-1)
        if self.kept is not None:
            flat = {name: np.concatenate([self.kept[name], value]) for name, value in flat.items()}
        order = np.lexsort((flat["rank"], flat["segment"], -flat["score"]))[: self.size]
        self.kept = {name: value[order] for name, value in flat.items()}
        if null_scores is None:
            return
        if self.null_score_reduction == "min":
            self.null = float(min(null_scores.min(), np.inf if self.null is None else self.null))
        elif (is_last := candidates["segment"][:, 0] == self.last_read_segment).any():
            self.null = float(null_scores[is_last][0])

    def candidates(self, context: str) -> list[dict]:
        """The kept spans, best first, as `nbest_answers` takes them."""
        kept = {name: value[np.isfinite(self.kept["score"])].tolist() for name, value in self.kept.items()}
        return [
            {"text": context[start:end], "start_logit": start_logit, "end_logit": end_logit, "start": start, "end": end}
            for start, end, start_logit, end_logit in zip(
                kept["char_start"], kept["char_end"], kept["start_logit"], kept["end_logit"]
            )
        ]


class MemXLNetQuestionAnsweringPipeline(Pipeline):
    """Extractive QA with character offsets into the context, over documents of any length.

    Call it like the transformers v4 pipeline: `pipe(question=..., context=...)`, lists of both, or
    `{"question", "context"}` dicts. Options: `top_k` (answers per question), `doc_stride` (overlap of consecutive
    windows in tokens), `max_answer_len`, `max_seq_len` (tokens per segment), `max_question_len`,
    `handle_impossible_answer` (allow the empty answer, as SQuAD v2), `align_to_words` (widen answers to whole
    words), `batch_size` (documents per time step for memory models, segments per forward pass otherwise); also
    `n_best_size`, `null_score_diff_threshold` and `null_score_reduction` (`"min"`, or `"last"` for models trained
    with the global softmax; default: `config.null_score_reduction` if set, else `"min"`) as in `run_qa.py`. Each
    answer is `{"score", "start", "end", "answer"}`; `score` is the n-best probability. One answer dict per question
    when `top_k=1`, else a list.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, tokenizer=None, **kwargs):
        super().__init__(model, tokenizer=tokenizer, **kwargs)
        _restore_custom_pipeline_names(self.model.config)
        if self.tokenizer is None or not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                "The question-answering pipeline needs a fast tokenizer (character offsets). Fix: pass "
                "tokenizer=AutoTokenizer.from_pretrained(<checkpoint>)."
            )
        config = self.model.config
        self.num_memory_tokens = getattr(config, "memory_num_tokens", 0) or 0
        # MemXLNet checkpoints (with or without memory) use the segment layout of run_qa.py; other models use their
        # tokenizer's own (question, context) template.
        self.uses_memxlnet_layout = hasattr(config, "memory_num_tokens")
        plain_windows = self.tokenizer.pad_token is not None and self.tokenizer.truncation_side == "right"
        if not self.uses_memxlnet_layout and not plain_windows:
            raise ValueError(
                "The tokenizer needs a pad token and truncation_side='right' to cut long contexts into windows as "
                "transformers v4 did. Fix: set tokenizer.pad_token and tokenizer.truncation_side = 'right'."
            )
        forward_parameters = inspect.signature(self.model.forward).parameters
        self.model_input_names = [
            name for name in ("input_ids", "attention_mask", "token_type_ids") if name in forward_parameters
        ]
        if self.num_memory_tokens and "memory_state" not in forward_parameters:
            raise ValueError(
                f"{type(self.model).__name__} has memory_num_tokens={self.num_memory_tokens} but its forward takes no "
                "memory_state. Fix: load the checkpoint with trust_remote_code=True (AutoModelForQuestionAnswering)."
            )

    def __call__(self, *args, **kwargs):
        """Answer one question (a dict) or several (a list); generators and datasets are answered lazily."""
        examples, single = normalize_qa_inputs(args, kwargs)
        batch_size = kwargs.pop("batch_size", None) or self._batch_size or 1
        kwargs.pop("num_workers", None)
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        preprocess_params = {**self._preprocess_params, **preprocess_params}
        forward_params = {**self._forward_params, **forward_params, "batch_size": batch_size}
        postprocess_params = {**self._postprocess_params, **postprocess_params}
        answers = self._answer_stream(examples, batch_size, preprocess_params, forward_params, postprocess_params)
        if not isinstance(examples, list):
            return answers
        answers = list(answers)
        return answers[0] if single else answers

    def _sanitize_parameters(
        self,
        top_k=None,
        topk=None,
        doc_stride=None,
        max_answer_len=None,
        max_seq_len=None,
        max_question_len=None,
        handle_impossible_answer=None,
        align_to_words=None,
        n_best_size=None,
        null_score_diff_threshold=None,
        null_score_reduction=None,
        padding=None,
        **unknown,
    ):
        if unknown:
            raise ValueError(f"Unknown argument(s) {sorted(unknown)} for the question-answering pipeline.")
        top_k = top_k if top_k is not None else topk
        for name, value, minimum in (
            ("top_k", top_k, 1),
            ("max_answer_len", max_answer_len, 1),
            ("max_seq_len", max_seq_len, 1),
            ("max_question_len", max_question_len, 1),
            ("doc_stride", doc_stride, 0),
            ("n_best_size", n_best_size, 1),
        ):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
                raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
        if null_score_reduction not in (None, "min", "last"):
            raise ValueError(f"`null_score_reduction` must be 'min' or 'last', got {null_score_reduction!r}.")

        def given(*pairs):
            return {name: value for name, value in pairs if value is not None}

        # Answer selection runs during the forward pass (running n-best), so its settings go there.
        return (
            given(("doc_stride", doc_stride), ("max_seq_len", max_seq_len), ("max_question_len", max_question_len)),
            given(("top_k", top_k), ("n_best_size", n_best_size), ("max_answer_len", max_answer_len),
                  ("handle_impossible_answer", handle_impossible_answer),
                  ("null_score_reduction", null_score_reduction)),
            given(("top_k", top_k), ("align_to_words", align_to_words),
                  ("null_score_diff_threshold", null_score_diff_threshold)),
        )

    def preprocess(self, example, doc_stride=None, max_seq_len=None, max_question_len=DEFAULT_MAX_QUESTION_LEN):
        """One document in compact form: the segment template, the context as int32 arrays and its windows.

        The segments themselves are built per forward pass (`build_segments`), so a document costs 16 bytes per
        context token instead of all its segments' ids, masks and offsets.
        """
        example = _as_example(example)
        if max_seq_len is None:
            # XLNet has relative positions (max_position_embeddings = -1): only positive limits bound the segment
            limits = (self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None))
            max_seq_len = min([384, *(limit for limit in limits if isinstance(limit, int) and limit > 0)])
        question = example["question"].lstrip()
        question_ids = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        question_len = min(len(question_ids["input_ids"]), max_question_len)
        if self.uses_memxlnet_layout:
            config = self.model.config
            template = segment_template(
                question_ids["input_ids"][:question_len],
                max_seq_length=max_seq_len,
                special_ids=special_token_ids(self.tokenizer),
                memory_read_ids=config.mem_read_token_ids or (),
                memory_write_ids=config.mem_write_token_ids or (),
            )
        else:
            question = question[: question_ids["offset_mapping"][question_len - 1][1]] if question_len else question
            template = self._tokenizer_template(question, max_seq_len)
        budget = self._context_budget(template, question_len, doc_stride)
        doc_stride = min(max_seq_len // 2, 128, budget - 1) if doc_stride is None else doc_stride
        context = self._tokenize_context(example["context"])
        starts = window_starts(len(context["context_ids"]), budget, doc_stride)
        return {
            "example": example,
            "template": template,
            **context,
            "window_starts": starts,
            "window_stops": np.minimum(starts + budget, len(context["context_ids"])),
            "num_segments": len(starts),
        }

    def _tokenizer_template(self, question: str, max_seq_len: int) -> dict:
        """The tokenizer's (question, context) layout, as transformers v4 chunked it: question first unless the
        tokenizer pads left (XLNet), read off one encoding with the pad token standing in for the context."""
        question_first = self.tokenizer.padding_side == "right"
        probe = self.tokenizer.pad_token
        encoded = self.tokenizer(
            *((question, probe) if question_first else (probe, question)),
            return_token_type_ids=True,
            return_attention_mask=False,
        )
        context_index = 1 if question_first else 0
        slot = [i for i, sequence in enumerate(encoded.sequence_ids()) if sequence == context_index]
        ids, types = np.asarray(encoded["input_ids"]), np.asarray(encoded["token_type_ids"])
        return {
            "max_seq_length": max_seq_len,
            "before_ids": ids[: slot[0]],
            "before_types": types[: slot[0]],
            "context_type": int(types[slot[0]]),
            "after_ids": ids[slot[-1] + 1:],
            "after_types": types[slot[-1] + 1:],
            "pad_id": self.tokenizer.pad_token_id,
            "pad_type": self.tokenizer.pad_token_type_id,
            "pad_left": not question_first,
        }

    def _context_budget(self, template: dict, question_len: int, doc_stride: int | None) -> int:
        """Context tokens per segment; a ValueError when none fit or `doc_stride` does not leave room to advance."""
        budget = template_budget(template)
        max_seq_len = template["max_seq_length"]
        if budget < 1:
            raise ValueError(
                f"max_seq_len={max_seq_len} is too small: the question ({question_len} tokens), "
                f"{2 * self.num_memory_tokens} memory tokens and the special tokens leave no room for the context. "
                "Fix: raise max_seq_len or lower max_question_len."
            )
        if doc_stride is not None and doc_stride >= budget:
            raise ValueError(
                f"doc_stride={doc_stride} must be smaller than the {budget} context tokens that max_seq_len="
                f"{max_seq_len} leaves per segment after the question and special/memory tokens. Fix: lower "
                "doc_stride or raise max_seq_len."
            )
        return budget

    def _tokenize_context(self, context: str) -> dict:
        """Token ids, character offsets and word ids of the context, as `prepare_qa_features` tokenizes it, in int32
        arrays. Tokenized piece by piece (`_cuts`), so no encoding of the whole document is ever held."""
        bounds = [0, *self._cuts(context), len(context)]
        ids, offsets, words = _join_pieces([self._encode(context[a:b]) for a, b in zip(bounds, bounds[1:])], bounds)
        return {"context_ids": ids, "context_offsets": offsets, "word_ids": words}

    def _encode(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
            return_token_type_ids=False, verbose=False,  # a long context is expected: it is cut into segments
        )
        return (
            np.asarray(encoded["input_ids"], dtype=np.int32),
            np.asarray(encoded["offset_mapping"], dtype=np.int32).reshape(-1, 2),
            np.asarray(encoded.word_ids(), dtype=np.int32),
        )

    def _cuts(self, context: str) -> Iterator[int]:
        """Cut positions about `CONTEXT_PIECE_CHARS` apart, before whitespace, where the text around the cut gives the
        same ids, offsets and words whole as in two parts. At the first cut that fails that check the rest of the
        context stays whole, so the pieces always give exactly the tokens of the whole context."""
        position = CONTEXT_PIECE_CHARS
        while match := CUT_BEFORE_WHITESPACE.search(context, position):
            cut = match.start()
            left, right = max(cut - CUT_CHECK_CHARS, 0), cut + CUT_CHECK_CHARS
            whole = self._encode(context[left:right])
            parts = _join_pieces([self._encode(context[left:cut]), self._encode(context[cut:right])], [0, cut - left])
            if not all(np.array_equal(a, b) for a, b in zip(whole, parts)):
                return
            yield cut
            position = cut + CONTEXT_PIECE_CHARS

    def _segments(self, documents: list[dict], rows: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """Segment arrays (`build_segments`) of `rows`, (document, segment) pairs, grouped by consecutive document."""
        parts = []
        for index, group in groupby(rows, key=itemgetter(0)):
            document = documents[index]
            segments = np.fromiter((segment for _, segment in group), dtype=np.int64)
            parts.append(build_segments(
                document["template"], document["context_ids"], document["context_offsets"],
                document["window_starts"][segments], document["window_stops"][segments],
            ))
        return {name: np.concatenate([part[name] for part in parts]) for name in SEGMENT_ARRAYS}

    def _model_inputs(self, segments: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(segments[name]).to(self.device) for name in self.model_input_names}

    def segment_logits(self, documents: list[dict], batch_size: int = 1) -> Iterator[tuple]:
        """`(rows, start_logits, end_logits, segments)` per forward pass over preprocessed `documents`.

        `rows` are the (document, segment) pairs of the logits rows, each document's segments in order; `segments`
        holds their `build_segments` arrays. Memory models run time-step-major, others `batch_size` segments at once.
        """
        if self.num_memory_tokens:
            yield from self._memory_passes(documents)
        else:
            yield from self._independent_passes(documents, batch_size)

    def _memory_passes(self, documents):
        """The passes of the model's `reading_order` over the documents (`reading_passes`); with two passes
        (bidirectional) the first one's logits are kept, one `(seq_len,)` pair per segment, and added to the second's."""
        *earlier_passes, (direction, use_backward_memory) = reading_passes(
            getattr(self.model.config, "reading_order", "forward")
        )
        kept = {}
        for earlier_direction, earlier_backward_memory in earlier_passes:
            for rows, start_logits, end_logits, _ in self._memory_pass(
                documents, earlier_direction, earlier_backward_memory
            ):
                kept.update(zip(rows, zip(start_logits, end_logits)))
        for rows, start_logits, end_logits, segments in self._memory_pass(documents, direction, use_backward_memory):
            if kept:
                earlier = [kept.pop(row) for row in rows]
                start_logits = start_logits + torch.stack([start for start, _ in earlier])
                end_logits = end_logits + torch.stack([end for _, end in earlier])
            yield rows, start_logits, end_logits, segments

    def _memory_pass(self, documents, direction: str, use_backward_memory: bool):
        """Time-step-major: step t runs the (t+1)-th segment, in `direction`, of every document that has one,
        carrying each one's memory (the model's second memory with `use_backward_memory`).

        Documents are sorted by length, so the documents still running at step t are a prefix of the batch and a
        finished document simply leaves the batch (what `segment_mask=False` does, without computing its row).
        """
        order = sorted(range(len(documents)), key=lambda i: -documents[i]["num_segments"])
        backward = direction == "backward"
        memory_state = self.model.get_initial_memory_state(len(documents), use_backward_memory)
        for step in range(documents[order[0]]["num_segments"]):
            rows = [(i, documents[i]["num_segments"] - 1 - step if backward else step)
                    for i in order if documents[i]["num_segments"] > step]
            segments = self._segments(documents, rows)
            outputs = self.model(
                **self._model_inputs(segments), memory_state=memory_state[: len(rows)],
                use_backward_memory=use_backward_memory,
            )
            memory_state = outputs.memory_state
            yield rows, outputs.start_logits, outputs.end_logits, segments

    def _independent_passes(self, documents, batch_size):
        """Segments do not see each other: run all segments of the batch `batch_size` rows at a time (as v4)."""
        rows = ((i, segment) for i, document in enumerate(documents) for segment in range(document["num_segments"]))
        while chunk := list(islice(rows, batch_size)):
            segments = self._segments(documents, chunk)
            outputs = self.model(**self._model_inputs(segments))
            yield chunk, outputs.start_logits, outputs.end_logits, segments

    def _forward(
        self,
        model_inputs,
        batch_size=1,
        top_k=1,
        n_best_size=DEFAULT_N_BEST_SIZE,
        max_answer_len=DEFAULT_MAX_ANSWER_LEN,
        handle_impossible_answer=False,
        null_score_reduction=None,
    ):
        """The running n-best (`RunningNBest`) of every document of a batch; logits are reduced pass by pass."""
        documents = model_inputs["documents"]
        reduction = null_score_reduction or getattr(self.model.config, "null_score_reduction", None) or "min"
        size = max(n_best_size, top_k)
        reading_order = getattr(self.model.config, "reading_order", "forward")
        best = [
            RunningNBest(size, reduction, int(last_read_segment(document["num_segments"], reading_order)))
            for document in documents
        ]
        for rows, start_logits, end_logits, segments in self.segment_logits(documents, batch_size):
            # float64 as run_qa's postprocessing, so sums and ties come out the same
            start = start_logits.float().cpu().numpy().astype(np.float64)
            end = end_logits.float().cpu().numpy().astype(np.float64)
            offsets = segments["offset_mapping"]
            candidates = span_candidates(start, end, offsets[..., 0] >= 0, size, max_answer_len)
            row_index = np.arange(len(rows))[:, None]
            candidates["char_start"] = offsets[row_index, candidates.pop("start"), 0]
            candidates["char_end"] = offsets[row_index, candidates.pop("end"), 1]
            candidates["segment"] = np.broadcast_to(
                np.array([segment for _, segment in rows])[:, None], candidates["score"].shape
            )
            nulls = None
            if handle_impossible_answer:
                cls = find_cls_positions(segments["input_ids"], self.tokenizer.cls_token_id)
                nulls = segment_null_scores(start, end, cls)
            first = 0
            for index, group in groupby(rows, key=itemgetter(0)):
                part = slice(first, first + len(list(group)))
                best[index].update(
                    {name: value[part] for name, value in candidates.items()}, None if nulls is None else nulls[part]
                )
                first = part.stop
        return {"best": best}

    def postprocess(self, model_outputs, top_k=1, align_to_words=True, null_score_diff_threshold=0.0):
        """Answers of one document from its n-best spans and null score, with run_qa.py's n-best / null logic."""
        context = model_outputs["example"]["context"]
        best = model_outputs["best"]
        result = nbest_answers(best.candidates(context), best.null, null_score_diff_threshold)
        prediction = result["prediction"]
        # The prediction first (it may be "" by the null-score threshold), then the other n-best answers.
        entries = sorted(result["nbest"], key=lambda entry: entry["text"] != prediction)
        answers, seen = [], set()
        for entry in entries:
            start, end = entry["start"], entry["end"]
            if align_to_words and end > start:
                start, end = self._align_to_words(model_outputs, start, end)
            if (start, end) in seen:
                continue
            seen.add((start, end))
            answers.append({"score": entry["probability"], "start": start, "end": end, "answer": context[start:end]})
            if len(answers) == top_k:
                break
        return answers[0] if top_k == 1 else answers

    @staticmethod
    def _align_to_words(document: dict, start: int, end: int) -> tuple[int, int]:
        """Widen a character span to the words (as the tokenizer splits them) that it touches.

        The lookups of the tokenizers `Encoding` (`char_to_token`, `token_to_word`, `word_to_chars`), vectorised over
        the compact arrays kept from preprocessing instead of tokenizing the context again.
        """
        char_starts, char_ends = document["context_offsets"][:, 0], document["context_offsets"][:, 1]
        words = document["word_ids"]

        def word_span(position: int) -> tuple[int, int] | None:
            tokens = np.flatnonzero((char_starts <= position) & (position < char_ends))
            if not len(tokens):
                return None
            word = words[tokens[0]]
            later = np.flatnonzero(words > word)
            same = np.flatnonzero(words[: later[0] if len(later) else len(words)] == word)
            return int(char_starts[same[0]]), int(char_ends[same[-1]])

        first, last = word_span(start), word_span(end - 1)
        return (first[0] if first else start), (last[1] if last else end)

    def _answer_stream(self, examples, batch_size, preprocess_params, forward_params, postprocess_params) -> Iterator:
        """Answers in input order; documents of similar length share a batch."""
        iterator = iter(examples)
        while block := list(islice(iterator, batch_size * SORT_WINDOW_BATCHES)):
            documents = [self.preprocess(example, **preprocess_params) for example in block]
            by_length = np.argsort([-document["num_segments"] for document in documents], kind="stable")
            answers = [None] * len(documents)
            for first in range(0, len(documents), batch_size):
                indices = by_length[first:first + batch_size].tolist()
                outputs = self.forward({"documents": [documents[i] for i in indices]}, **forward_params)
                for i, best in zip(indices, outputs["best"]):
                    answers[i] = self.postprocess({**documents[i], "best": best}, **postprocess_params)
                    documents[i] = None  # answered: its arrays can go
            yield from answers


# `Pipeline.save_pretrained` writes this entry into `config.custom_pipelines` and copies this file, so any extractive
# QA model saved through the pipeline (e.g. a plain XLNet or BERT) becomes loadable with `pipeline(...)` as well.
MemXLNetQuestionAnsweringPipeline._registered_impl = {
    "question-answering": {"impl": MemXLNetQuestionAnsweringPipeline, "pt": (AutoModelForQuestionAnswering,)}
}

__all__ = ["MemXLNetQuestionAnsweringPipeline", "RunningNBest", "normalize_qa_inputs"]
