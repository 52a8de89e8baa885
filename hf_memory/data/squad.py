"""SQuAD-v2-style data: loading (Hub or official JSON), validation, and segmentation into memory documents.

Bad input fails early with a ValueError that names the file and the field, or is repaired/dropped with a counted
warning, so nothing malformed reaches the Trainer.
"""

import json
import logging
import re
from collections import Counter
from pathlib import Path

import datasets

from ..models.memxlnet.qa_processing_memxlnet import prepare_qa_features

logger = logging.getLogger(__name__)

SQUAD_V2_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": datasets.Sequence(
            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
        ),
    }
)
REQUIRED_QA_FIELDS = ("id", "question")


def _require(mapping, field: str, where: str):
    if not isinstance(mapping, dict) or field not in mapping:
        raise ValueError(f"{where}: missing field {field!r}. Fix: every entry needs {field!r} (SQuAD 2.0 format).")
    return mapping[field]


def _flatten_official(payload: dict, path: Path) -> list[dict]:
    records = []
    for a, article in enumerate(_require(payload, "data", str(path))):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_require(article, "paragraphs", f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _require(paragraph, "context", where)
            for q, qa in enumerate(_require(paragraph, "qas", where)):
                qa_where = f"{where}.qas[{q}]"
                for field in REQUIRED_QA_FIELDS:
                    _require(qa, field, qa_where)
                answers = qa.get("answers", [])
                if not qa.get("is_impossible", False) and "answers" not in qa:
                    raise ValueError(f"{qa_where}: missing field 'answers' on an answerable question.")
                if qa.get("is_impossible", False):
                    answers = []
                for n, answer in enumerate(answers):
                    _require(answer, "text", f"{qa_where}.answers[{n}]")
                    _require(answer, "answer_start", f"{qa_where}.answers[{n}]")
                records.append(
                    {
                        "id": str(qa["id"]),
                        "title": title,
                        "context": context,
                        "question": qa["question"],
                        "answers": {
                            "text": [answer["text"] for answer in answers],
                            "answer_start": [int(answer["answer_start"]) for answer in answers],
                        },
                    }
                )
    return records


def _check_flat(records: list, path: Path) -> list[dict]:
    for i, record in enumerate(records):
        for field in ("id", "context", "question", "answers"):
            _require(record, field, f"{path}: record {i}")
        for field in ("text", "answer_start"):
            _require(record["answers"], field, f"{path}: record {i}.answers")
        record.setdefault("title", "")
    return records


def load_squad_json(path: str | Path) -> list[dict]:
    """Flat `squad_v2` records from the official nested JSON or from flat records (a list, JSON lines or `data`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Data file {str(path)!r} does not exist. Fix: pass an existing SQuAD-format .json file.")
    text = path.read_text(encoding="utf-8")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        try:
            payload = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ValueError(
                f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}). "
                "Fix: repair the file or export it again as SQuAD 2.0 JSON."
            ) from None
    if isinstance(payload, dict) and payload.get("data") and isinstance(payload["data"], list):
        if isinstance(payload["data"][0], dict) and "paragraphs" in payload["data"][0]:
            return _flatten_official(payload, path)
        return _check_flat(payload["data"], path)
    if isinstance(payload, list):
        return _check_flat(payload, path)
    raise ValueError(
        f"{path}: expected SQuAD 2.0 JSON ({{'data': [{{'paragraphs': [...]}}]}}) or a list of flat records "
        "with id/context/question/answers."
    )


def load_raw_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    data_files: dict[str, str] | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
) -> datasets.DatasetDict:
    """Hub dataset (`dataset_name`) or local files `{split: path}`, validated and cleaned (see `clean_squad_dataset`)."""
    if dataset_name is not None:
        raw = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, token=token)
    elif data_files:
        raw = datasets.DatasetDict(
            {
                split: datasets.Dataset.from_list(load_squad_json(path), features=SQUAD_V2_FEATURES)
                for split, path in data_files.items()
            }
        )
    else:
        raise ValueError("No data. Fix: pass --dataset_name or --train_file/--validation_file/--test_file.")
    missing = [field for field in ("id", "context", "question") if field not in raw[next(iter(raw))].column_names]
    if missing:
        raise ValueError(f"The dataset lacks the column(s) {missing}. Fix: use data in the squad_v2 schema.")
    return datasets.DatasetDict({split: clean_squad_dataset(dataset, split) for split, dataset in raw.items()})


def _repair_answers(context: str, answers: dict) -> tuple[dict, str | None]:
    """Keep answers whose text is at `answer_start`; move the others to the nearest occurrence; drop the rest."""
    texts, starts, issue = [], [], None
    for text, start in zip(answers["text"], answers["answer_start"]):
        if context[start:start + len(text)] != text:
            occurrences = [match.start() for match in re.finditer(re.escape(text), context)] if text else []
            if not occurrences:
                issue = "answer text not found in the context (answer dropped)"
                continue
            start = min(occurrences, key=lambda i: abs(i - start))
            issue = issue or "answer_start did not match the answer text (moved to the nearest occurrence)"
        texts.append(text)
        starts.append(start)
    return {"text": texts, "answer_start": starts}, issue


def _clean_batch(batch: dict) -> dict:
    issues, answers = [], []
    for context, gold in zip(batch["context"], batch["answers"]):
        if not context.strip():
            issues.append("empty context (question dropped)")
            answers.append(gold)
            continue
        repaired, issue = _repair_answers(context, gold)
        if issue and gold["text"] and not repaired["text"]:
            issue = "no answer matches the context (question dropped)"
        issues.append(issue or "")
        answers.append(repaired)
    return {"answers": answers, "_issue": issues}


def clean_squad_dataset(dataset: datasets.Dataset, split: str) -> datasets.Dataset:
    """Repair `answer_start` mismatches and drop empty contexts / unfindable answers, logging a count per problem."""
    if "answers" not in dataset.column_names:
        return dataset
    dataset = dataset.map(_clean_batch, batched=True, desc=f"Validating {split}")
    counts = Counter(issue for issue in dataset["_issue"] if issue)
    for issue, count in counts.items():
        logger.warning("%s: %d example(s) with %s.", split, count, issue)
    if any(issue.endswith("(question dropped)") for issue in counts):
        dataset = dataset.filter(lambda issue: not issue.endswith("(question dropped)"), input_columns="_issue")
    return dataset.remove_columns("_issue")


def preprocess_qa_dataset(
    dataset: datasets.Dataset,
    tokenizer,
    *,
    split: str,
    max_seq_length: int,
    doc_stride: int,
    max_n_segs: int | None,
    max_query_length: int,
    memory_read_ids=(),
    memory_write_ids=(),
    num_proc: int | None = None,
    load_from_cache_file: bool = True,
) -> datasets.Dataset:
    """One row per question: its segments (memory layout), labels when answers exist, and `example_id`."""
    with_labels = "answers" in dataset.column_names

    def segment(batch):
        rows = prepare_qa_features(
            tokenizer,
            batch["question"],
            batch["context"],
            batch["answers"] if with_labels else None,
            max_seq_length=max_seq_length,
            doc_stride=doc_stride,
            max_n_segs=max_n_segs,
            max_query_length=max_query_length,
            memory_read_ids=memory_read_ids,
            memory_write_ids=memory_write_ids,
        )
        rows["example_id"] = batch["id"]
        return rows

    features = dataset.map(
        segment,
        batched=True,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        load_from_cache_file=load_from_cache_file,
        desc=f"Segmenting {split}",
    )
    log_truncation(features, split, max_n_segs, max_query_length)
    return features


def log_truncation(features: datasets.Dataset, split: str, max_n_segs: int | None, max_query_length: int):
    """Warn with counts when documents lost segments to `max_n_segs` or questions were cut (never silently)."""
    num_segments, num_windows = features["num_segments"], features["num_windows"]
    truncated = sum(kept < total for kept, total in zip(num_segments, num_windows))
    if truncated:
        lost = sum(total - kept for kept, total in zip(num_segments, num_windows))
        logger.warning(
            "%s: %d of %d documents were longer than max_n_segs=%s segments; %d trailing segments were dropped.",
            split, truncated, len(features), max_n_segs, lost,
        )
    questions = sum(features["question_truncated"])
    if questions:
        logger.warning("%s: %d question(s) exceeded max_query_length=%d tokens and were truncated.", split, questions,
                       max_query_length)
    logger.info("%s: %d documents, %d segments.", split, len(features), sum(num_segments))
