"""Glue between the Trainer's per-segment logits, the answer extraction and the SQuAD v2 metric."""

import json
import os
from pathlib import Path

import evaluate

from ..models.memxlnet.qa_processing_memxlnet import postprocess_qa_predictions

SQUAD_V2_METRIC_PATH = Path(__file__).resolve().parent / "squad_v2" / "squad_v2.py"


def squad_v2_metric_path() -> str:
    """Absolute path of the local SQuAD v2 metric module, for `evaluate.load(path)` (no Hub needed)."""
    return str(SQUAD_V2_METRIC_PATH)


def load_squad_v2_metric() -> evaluate.EvaluationModule:
    return evaluate.load(squad_v2_metric_path())


def postprocess_and_save(
    examples,
    features,
    predictions,
    *,
    cls_token_id: int,
    version_2_with_negative: bool,
    n_best_size: int,
    max_answer_length: int,
    null_score_diff_threshold: float,
    null_score_reduction: str = "min",
    reading_order: str = "forward",
    output_dir: str | None = None,
    prefix: str = "eval",
) -> dict:
    """Extract answers from `(start_logits, end_logits)` and write `{prefix}_predictions.json`,
    `{prefix}_nbest_predictions.json` and (v2) `{prefix}_null_odds.json` like the official `utils_qa`.

    Returns the `postprocess_qa_predictions` dict plus `metric_predictions`/`references` in the squad_v2 format.
    The metric gets the best non-null span with `no_answer_probability` = null odds, so its threshold at
    `null_score_diff_threshold` reproduces the "" decisions and its `best_*_thresh` are thresholds in the same
    units as `--null_score_diff_threshold`.
    """
    start_logits, end_logits = predictions
    columns = ["example_id", "offset_mapping", "input_ids", "num_segments"]
    feature_rows = features.select_columns(columns).to_list() if hasattr(features, "select_columns") else features
    example_rows = examples.select_columns(["id", "context"]).to_list() if hasattr(examples, "select_columns") else examples
    result = postprocess_qa_predictions(
        example_rows,
        feature_rows,
        start_logits,
        end_logits,
        cls_token_id=cls_token_id,
        version_2_with_negative=version_2_with_negative,
        n_best_size=n_best_size,
        max_answer_length=max_answer_length,
        null_score_diff_threshold=null_score_diff_threshold,
        null_score_reduction=null_score_reduction,
        reading_order=reading_order,
    )
    if version_2_with_negative:
        result["metric_predictions"] = [
            {"id": qid, "prediction_text": text, "no_answer_probability": result["null_odds"][qid]}
            for qid, text in result["best_non_null"].items()
        ]
    else:
        result["metric_predictions"] = [
            {"id": qid, "prediction_text": text} for qid, text in result["predictions"].items()
        ]
    if hasattr(examples, "column_names") and "answers" in examples.column_names:
        result["references"] = [
            {"id": row["id"], "answers": row["answers"]} for row in examples.select_columns(["id", "answers"])
        ]
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        outputs = {"predictions": result["predictions"], "nbest_predictions": result["nbest"]}
        if version_2_with_negative:
            outputs["null_odds"] = result["null_odds"]
        for name, payload in outputs.items():
            with open(os.path.join(output_dir, f"{prefix}_{name}.json"), "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=2, ensure_ascii=False)
    return result
