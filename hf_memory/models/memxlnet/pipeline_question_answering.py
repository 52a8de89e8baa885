"""Extractive question answering over long documents, shipped next to the weights of every MemXLNet checkpoint.

transformers 5.23 removed `QuestionAnsweringPipeline`; `pipeline("question-answering", model=<checkpoint>,
trust_remote_code=True)` still resolves a class named in `config.custom_pipelines`, which is this one. Memory models
read each document segment by segment, carrying `memory_state`, several documents batched time-step-major. Plain
extractive QA models (XLNet, BERT-style, `memory_num_tokens=0`) get chunk-independent inference as in transformers
v4, so the class is also a drop-in replacement for the removed pipeline. Segmentation and answer selection are the
functions `run_qa.py` evaluation uses (`qa_processing_memxlnet`), so both give the same answers.
"""

import inspect
from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, Pipeline

from .qa_processing_memxlnet import context_budget, offsets_array, postprocess_qa_predictions, prepare_qa_features

# Documents preprocessed together and sorted by length, so that a batch holds documents of similar length and few
# rows of a time step are idle.
SORT_WINDOW_BATCHES = 16
DEFAULT_MAX_QUESTION_LEN = 64
DEFAULT_MAX_ANSWER_LEN = 15
DEFAULT_N_BEST_SIZE = 20


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


class MemXLNetQuestionAnsweringPipeline(Pipeline):
    """Extractive QA with character offsets into the context, over documents of any length.

    Call it like the transformers v4 pipeline: `pipe(question=..., context=...)`, lists of both, or
    `{"question", "context"}` dicts. Options: `top_k` (answers per question), `doc_stride` (overlap of consecutive
    windows in tokens), `max_answer_len`, `max_seq_len` (tokens per segment), `max_question_len`,
    `handle_impossible_answer` (allow the empty answer, as SQuAD v2), `align_to_words` (widen answers to whole
    words), `batch_size` (documents per time step for memory models, segments per forward pass otherwise); also
    `n_best_size`, `null_score_diff_threshold` and `null_score_reduction` (`"min"`, or `"last"` for models trained
    with the global softmax; default: `config.null_score_reduction` if set, else `"min"`) as in `run_qa.py`. Each answer is `{"score", "start", "end",
    "answer"}`; `score` is the n-best probability. One answer dict per question when `top_k=1`, else a list.
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
        preprocess = {
            name: value
            for name, value in (("doc_stride", doc_stride), ("max_seq_len", max_seq_len),
                                ("max_question_len", max_question_len))
            if value is not None
        }
        postprocess = {
            name: value
            for name, value in (("top_k", top_k), ("max_answer_len", max_answer_len),
                                ("handle_impossible_answer", handle_impossible_answer),
                                ("align_to_words", align_to_words), ("n_best_size", n_best_size),
                                ("null_score_diff_threshold", null_score_diff_threshold),
                                ("null_score_reduction", null_score_reduction))
            if value is not None
        }
        return preprocess, {}, postprocess

    def _segment_geometry(self, question_len: int, max_seq_len: int, doc_stride: int | None) -> int:
        """Validated `doc_stride` for a question of `question_len` tokens in segments of `max_seq_len` tokens."""
        reserved = (
            context_budget(max_seq_len, self.num_memory_tokens, question_len)
            if self.uses_memxlnet_layout
            else max_seq_len - question_len - self.tokenizer.num_special_tokens_to_add(pair=True)
        )
        if reserved < 1:
            raise ValueError(
                f"max_seq_len={max_seq_len} is too small: the question ({question_len} tokens), "
                f"{2 * self.num_memory_tokens} memory tokens and the special tokens leave no room for the context. "
                "Fix: raise max_seq_len or lower max_question_len."
            )
        if doc_stride is None:
            return min(max_seq_len // 2, 128, reserved - 1)
        if doc_stride >= reserved:
            raise ValueError(
                f"doc_stride={doc_stride} must be smaller than the {reserved} context tokens that max_seq_len="
                f"{max_seq_len} leaves per segment after the question and special/memory tokens. Fix: lower "
                "doc_stride or raise max_seq_len."
            )
        return doc_stride

    def preprocess(self, example, doc_stride=None, max_seq_len=None, max_question_len=DEFAULT_MAX_QUESTION_LEN):
        """All segments of one document: tensors of shape (segments, max_seq_len) and per-token context offsets."""
        example = _as_example(example)
        if max_seq_len is None:
            positions = getattr(self.model.config, "max_position_embeddings", None) or 384
            max_seq_len = min(self.tokenizer.model_max_length, positions, 384)
        question = example["question"].lstrip()
        question_ids = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        question_len = min(len(question_ids["input_ids"]), max_question_len)
        doc_stride = self._segment_geometry(question_len, max_seq_len, doc_stride)
        if self.uses_memxlnet_layout:
            features = self._memxlnet_segments(example, max_seq_len, doc_stride, question_len)
        else:
            question = question[: question_ids["offset_mapping"][question_len - 1][1]] if question_len else question
            features = self._tokenizer_segments(question, example["context"], max_seq_len, doc_stride)
        return {"example": example, **features}

    def _memxlnet_segments(self, example, max_seq_len, doc_stride, question_len) -> dict:
        config = self.model.config
        rows = prepare_qa_features(
            self.tokenizer,
            [example["question"]],
            [example["context"]],
            max_seq_length=max_seq_len,
            doc_stride=doc_stride,
            max_query_length=question_len,
            memory_read_ids=config.mem_read_token_ids or (),
            memory_write_ids=config.mem_write_token_ids or (),
        )
        return {
            "input_ids": torch.tensor(rows["input_ids"][0]),
            "attention_mask": torch.tensor(rows["attention_mask"][0]),
            "token_type_ids": torch.tensor(rows["token_type_ids"][0]),
            "offset_mapping": offsets_array(rows["offset_mapping"][0]),
        }

    def _tokenizer_segments(self, question, context, max_seq_len, doc_stride) -> dict:
        """v4 chunking with the tokenizer's template: question first unless the tokenizer pads left (XLNet)."""
        question_first = self.tokenizer.padding_side == "right"
        encoded = self.tokenizer(
            question if question_first else context,
            context if question_first else question,
            truncation="only_second" if question_first else "only_first",
            max_length=max_seq_len,
            stride=doc_stride,
            padding="max_length",
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_token_type_ids=True,
            return_tensors="pt",
        )
        context_index = 1 if question_first else 0
        offsets = encoded["offset_mapping"].tolist()
        offset_mapping = [
            [tuple(pair) if sequence == context_index else None for pair, sequence in zip(row, encoded.sequence_ids(i))]
            for i, row in enumerate(offsets)
        ]
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "token_type_ids": encoded["token_type_ids"],
            "offset_mapping": offsets_array(offset_mapping),
        }

    def _forward(self, model_inputs, batch_size=1):
        """Logits of every segment of a batch of documents, `(segments, max_seq_len)` per document."""
        documents = model_inputs["documents"]
        if self.num_memory_tokens:
            start, end = self._forward_with_memory(documents)
        else:
            start, end = self._forward_independent(documents, batch_size)
        return {"start_logits": start, "end_logits": end}

    def _forward_with_memory(self, documents):
        """Time-step-major: step t runs segment t of every document that has one, carrying each one's memory.

        Documents are sorted by length, so the documents still running at step t are a prefix of the batch and a
        finished document simply leaves the batch (what `segment_mask=False` does, without computing its row).
        """
        lengths = torch.tensor([len(document["input_ids"]) for document in documents])
        order = torch.argsort(lengths, descending=True, stable=True)
        sorted_lengths = lengths[order]
        stacked = {
            name: torch.nn.utils.rnn.pad_sequence([documents[i][name] for i in order.tolist()], batch_first=True)
            for name in self.model_input_names
        }  # (documents, steps, max_seq_len)
        num_documents, num_steps, seq_len = stacked["input_ids"].shape
        start = torch.zeros(num_documents, num_steps, seq_len)
        end = torch.zeros(num_documents, num_steps, seq_len)
        memory_state = self.model.get_initial_memory_state(num_documents)
        for step in range(num_steps):
            active = int((sorted_lengths > step).sum())
            outputs = self.model(
                **{name: tensor[:active, step] for name, tensor in stacked.items()},
                memory_state=memory_state[:active],
            )
            memory_state = outputs.memory_state
            start[:active, step], end[:active, step] = outputs.start_logits.float(), outputs.end_logits.float()
        restore = torch.argsort(order)
        return (
            [start[rank, :length] for rank, length in zip(restore.tolist(), lengths.tolist())],
            [end[rank, :length] for rank, length in zip(restore.tolist(), lengths.tolist())],
        )

    def _forward_independent(self, documents, batch_size):
        """Segments do not see each other: run all segments of the batch `batch_size` rows at a time (as v4)."""
        rows = {name: torch.cat([document[name] for document in documents]) for name in self.model_input_names}
        starts, ends = [], []
        for first in range(0, len(rows["input_ids"]), batch_size):
            outputs = self.model(**{name: tensor[first:first + batch_size] for name, tensor in rows.items()})
            starts.append(outputs.start_logits.float())
            ends.append(outputs.end_logits.float())
        lengths = [len(document["input_ids"]) for document in documents]
        return list(torch.cat(starts).split(lengths)), list(torch.cat(ends).split(lengths))

    def postprocess(
        self,
        model_outputs,
        top_k=1,
        handle_impossible_answer=False,
        max_answer_len=DEFAULT_MAX_ANSWER_LEN,
        align_to_words=True,
        n_best_size=DEFAULT_N_BEST_SIZE,
        null_score_diff_threshold=0.0,
        null_score_reduction=None,
    ):
        """Answers of one document from the logits of all its segments, with run_qa.py's n-best / null logic."""
        context = model_outputs["example"]["context"]
        start_logits, end_logits = model_outputs["start_logits"], model_outputs["end_logits"]
        feature = {
            "example_id": 0,
            "input_ids": model_outputs["input_ids"].tolist(),
            "offset_mapping": model_outputs["offset_mapping"],
            "num_segments": len(start_logits),
        }
        result = postprocess_qa_predictions(
            [{"id": 0, "context": context}],
            [feature],
            start_logits.numpy()[None],
            end_logits.numpy()[None],
            cls_token_id=self.tokenizer.cls_token_id,
            version_2_with_negative=handle_impossible_answer,
            n_best_size=max(n_best_size, top_k),
            max_answer_length=max_answer_len,
            null_score_diff_threshold=null_score_diff_threshold,
            null_score_reduction=null_score_reduction or getattr(self.model.config, "null_score_reduction", "min"),
        )
        prediction = result["predictions"][0]
        # The prediction first (it may be "" by the null-score threshold), then the other n-best answers.
        entries = sorted(result["nbest"][0], key=lambda entry: entry["text"] != prediction)
        answers, seen = [], set()
        word_encoding = None
        for entry in entries:
            start, end = entry["start"], entry["end"]
            if align_to_words and end > start:
                if word_encoding is None:
                    word_encoding = self.tokenizer(context, add_special_tokens=False)
                start, end = self._align_to_words(word_encoding, start, end)
            if (start, end) in seen:
                continue
            seen.add((start, end))
            answers.append({"score": entry["probability"], "start": start, "end": end, "answer": context[start:end]})
            if len(answers) == top_k:
                break
        return answers[0] if top_k == 1 else answers

    @staticmethod
    def _align_to_words(encoding, start: int, end: int) -> tuple[int, int]:
        """Widen a character span to the words (as the tokenizer splits them) that it touches."""
        first_token, last_token = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first_token is not None:
            start = encoding.word_to_chars(encoding.token_to_word(first_token)).start
        if last_token is not None:
            end = encoding.word_to_chars(encoding.token_to_word(last_token)).end
        return start, end

    def _answer_stream(self, examples, batch_size, preprocess_params, forward_params, postprocess_params) -> Iterator:
        """Answers in input order; documents of similar length share a batch."""
        iterator = iter(examples)
        while block := list(islice(iterator, batch_size * SORT_WINDOW_BATCHES)):
            documents = [self.preprocess(example, **preprocess_params) for example in block]
            by_length = np.argsort([-len(document["input_ids"]) for document in documents], kind="stable")
            answers = [None] * len(documents)
            for first in range(0, len(documents), batch_size):
                indices = by_length[first:first + batch_size].tolist()
                model_inputs = [{name: documents[i][name] for name in self.model_input_names} for i in indices]
                outputs = self.forward({"documents": model_inputs}, **forward_params)
                for i, start, end in zip(indices, outputs["start_logits"], outputs["end_logits"]):
                    answers[i] = self.postprocess(
                        {**documents[i], "start_logits": start, "end_logits": end}, **postprocess_params
                    )
            yield from answers


# `Pipeline.save_pretrained` writes this entry into `config.custom_pipelines` and copies this file, so any extractive
# QA model saved through the pipeline (e.g. a plain XLNet or BERT) becomes loadable with `pipeline(...)` as well.
MemXLNetQuestionAnsweringPipeline._registered_impl = {
    "question-answering": {"impl": MemXLNetQuestionAnsweringPipeline, "pt": (AutoModelForQuestionAnswering,)}
}

__all__ = ["MemXLNetQuestionAnsweringPipeline", "normalize_qa_inputs"]
