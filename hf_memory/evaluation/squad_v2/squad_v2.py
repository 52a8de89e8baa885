"""SQuAD 2.0 metric as a local `evaluate` module (works offline: `evaluate.load(<path of this file>)`).

Implements the official SQuAD 2.0 evaluation algorithm (v2.0 script): answer normalisation, exact match and token
F1 maxed over the gold answers, the no-answer probability threshold, the HasAns/NoAns breakdown and the best
threshold search. Keep one import per line: evaluate's dependency scanner rejects `import a, b`.
"""

import collections
import re
import string

import datasets
import evaluate

_CITATION = """\
@inproceedings{rajpurkar-etal-2018-know,
    title = "Know What You Don{'}t Know: Unanswerable Questions for {SQ}u{AD}",
    author = "Rajpurkar, Pranav and Jia, Robin and Liang, Percy",
    booktitle = "Proceedings of ACL 2018",
    year = "2018",
}
"""

_DESCRIPTION = """\
SQuAD 2.0 exact match and F1, with the HasAns/NoAns breakdown and the best no-answer thresholds, computed as the
official evaluation script does.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id", "prediction_text", "no_answer_probability"}.
    references: list of {"id", "answers": {"text": [...], "answer_start": [...]}} (empty lists: unanswerable).
    no_answer_threshold: a question counts as predicted unanswerable when its no_answer_probability is above it.
Returns:
    exact, f1, total, HasAns_exact, HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1, NoAns_total (when such
    questions exist), best_exact, best_exact_thresh, best_f1, best_f1_thresh.
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_score(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str) -> float:
    gold_tokens, prediction_tokens = answer_tokens(gold), answer_tokens(prediction)
    if not gold_tokens or not prediction_tokens:
        return float(gold_tokens == prediction_tokens)
    overlap = sum((collections.Counter(gold_tokens) & collections.Counter(prediction_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(prediction_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def raw_scores(gold_answers: dict, predictions: dict) -> tuple[dict, dict]:
    """Exact and F1 per predicted question, maxed over its gold answers ([""] when unanswerable)."""
    exact, f1 = {}, {}
    for qid, answers in gold_answers.items():
        if qid not in predictions:
            continue
        golds = [answer for answer in answers if normalize_answer(answer)] or [""]
        exact[qid] = max(exact_score(gold, predictions[qid]) for gold in golds)
        f1[qid] = max(f1_score(gold, predictions[qid]) for gold in golds)
    return exact, f1


def apply_no_answer_threshold(scores: dict, na_probs: dict, has_answer: dict, threshold: float) -> dict:
    """Questions whose no-answer probability exceeds the threshold score 1 iff they are unanswerable."""
    return {
        qid: float(not has_answer[qid]) if na_probs[qid] > threshold else score for qid, score in scores.items()
    }


def summary(exact: dict, f1: dict, qids: list | None = None) -> dict:
    qids = list(exact) if not qids else qids
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / total,
        "f1": 100.0 * sum(f1[q] for q in qids) / total,
        "total": total,
    }


def best_threshold(predictions: dict, scores: dict, na_probs: dict, has_answer: dict) -> tuple[float, float]:
    """Sweep the no-answer threshold over the sorted probabilities, starting from "everything unanswerable"."""
    current = best = sum(1 for qid in has_answer if not has_answer[qid])
    threshold = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), threshold


def squad_v2_scores(gold_answers: dict, predictions: dict, na_probs: dict, no_answer_threshold: float = 1.0) -> dict:
    """The official SQuAD 2.0 report. `gold_answers`: id -> list of answer texts (empty = unanswerable)."""
    has_answer = {qid: bool(answers) for qid, answers in gold_answers.items()}
    exact_raw, f1_raw = raw_scores(gold_answers, predictions)
    exact = apply_no_answer_threshold(exact_raw, na_probs, has_answer, no_answer_threshold)
    f1 = apply_no_answer_threshold(f1_raw, na_probs, has_answer, no_answer_threshold)
    result = summary(exact, f1)
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid, value in has_answer.items() if value == wanted]
        if qids:
            result.update({f"{prefix}_{key}": value for key, value in summary(exact, f1, qids).items()})
    result["best_exact"], result["best_exact_thresh"] = best_threshold(predictions, exact_raw, na_probs, has_answer)
    result["best_f1"], result["best_f1_thresh"] = best_threshold(predictions, f1_raw, na_probs, has_answer)
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadV2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "id": datasets.Value("string"),
                        "prediction_text": datasets.Value("string"),
                        "no_answer_probability": datasets.Value("float32"),
                    },
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.features.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references, no_answer_threshold=1.0):
        gold_answers = {reference["id"]: list(reference["answers"]["text"]) for reference in references}
        texts = {prediction["id"]: prediction["prediction_text"] for prediction in predictions}
        missing = [qid for qid in gold_answers if qid not in texts]
        if missing:
            raise ValueError(
                f"{len(missing)} reference question(s) have no prediction (e.g. {missing[0]!r}). Fix: predict every "
                "question, with prediction_text '' for no answer."
            )
        na_probs = {prediction["id"]: prediction["no_answer_probability"] for prediction in predictions}
        return squad_v2_scores(gold_answers, texts, na_probs, no_answer_threshold)
