"""The local SQuAD v2 metric: official algorithm on hand-made cases and a real file, loadable offline."""

import json

import evaluate
import pytest

from hf_memory.evaluation import squad_v2_metric_path
from hf_memory.evaluation.squad_v2.squad_v2 import f1_score, normalize_answer, squad_v2_scores


def test_normalisation_and_token_f1():
    assert normalize_answer("The  Cat, a   dog!") == "cat dog"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert f1_score("the cat sat", "cat sat down") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1_score("", "") == 1.0 and f1_score("", "x") == 0.0 and f1_score("a", "the") == 1.0


def test_hand_made_report_with_thresholds():
    gold = {"q1": ["Paris", "the city of Paris"], "q2": ["1984"], "q3": [], "q4": []}
    predictions = {"q1": "city of paris", "q2": "in 1984 or 1985", "q3": "", "q4": "oops"}
    na_probs = {"q1": 0.1, "q2": 0.7, "q3": 0.9, "q4": 0.4}
    report = squad_v2_scores(gold, predictions, na_probs, no_answer_threshold=0.5)
    # q1 exact (normalised "city of paris" == gold 2), q2 predicted null (0.7 > 0.5) but answerable -> 0,
    # q3 null and unanswerable -> 1, q4 answered although unanswerable -> 0
    assert report["exact"] == pytest.approx(50.0) and report["f1"] == pytest.approx(50.0)
    assert report["total"] == 4 and report["HasAns_total"] == 2 and report["NoAns_total"] == 2
    assert report["HasAns_exact"] == pytest.approx(50.0) and report["NoAns_exact"] == pytest.approx(50.0)
    # best threshold sweep over na_probs sorted: start at 2 (both NoAns right), q1 (+1) -> 3 at 0.1, q4 (-1) -> 2,
    # q2 exact (+0) / f1 (+0.4) -> 2 / 2.4, q3 (+0)
    assert report["best_exact"] == pytest.approx(75.0) and report["best_exact_thresh"] == pytest.approx(0.1)
    f1_q2 = 2 * (1 / 4) * 1 / (1 / 4 + 1)
    assert report["best_f1"] == pytest.approx(75.0) and report["best_f1_thresh"] == pytest.approx(0.1)
    no_threshold = squad_v2_scores(gold, predictions, {q: 0.0 for q in gold}, no_answer_threshold=1.0)
    assert no_threshold["HasAns_f1"] == pytest.approx(100 * (1 + f1_q2) / 2)


def test_offline_evaluate_load_and_real_file(squad_small_file):
    metric = evaluate.load(squad_v2_metric_path())
    data = json.loads(squad_small_file.read_text(encoding="utf-8"))["data"]
    questions = [qa for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    references = [
        {"id": qa["id"], "answers": {"text": [a["text"] for a in qa["answers"]],
                                     "answer_start": [a["answer_start"] for a in qa["answers"]]}}
        for qa in questions
    ]
    perfect = [
        {"id": qa["id"], "prediction_text": qa["answers"][0]["text"] if qa["answers"] else "",
         "no_answer_probability": 0.0}
        for qa in questions
    ]
    report = metric.compute(predictions=perfect, references=references)
    unanswerable = sum(1 for qa in questions if not qa["answers"])
    assert report["exact"] == report["f1"] == report["best_f1"] == 100.0
    assert report["total"] == len(questions) == 1407 and report["NoAns_total"] == unanswerable == 702
    all_null = [{**p, "prediction_text": ""} for p in perfect]
    report = metric.compute(predictions=all_null, references=references)
    assert report["exact"] == pytest.approx(100 * unanswerable / len(questions))
    assert report["HasAns_f1"] == 0.0 and report["NoAns_exact"] == 100.0
    # the threshold turns answers into nulls exactly like predicting "" for them
    flagged = [{**p, "no_answer_probability": 1.0 if i % 3 == 0 else 0.0} for i, p in enumerate(perfect)]
    emptied = [{**p, "prediction_text": "" if i % 3 == 0 else p["prediction_text"]} for i, p in enumerate(perfect)]
    by_threshold = metric.compute(predictions=flagged, references=references, no_answer_threshold=0.5)
    by_text = metric.compute(predictions=emptied, references=references)
    assert {k: by_threshold[k] for k in ("exact", "f1", "HasAns_f1")} == {
        k: by_text[k] for k in ("exact", "f1", "HasAns_f1")
    }
    with pytest.raises(ValueError, match="no prediction"):
        metric.compute(predictions=[{**perfect[0], "id": "unknown"}] + perfect[1:], references=references)
