"""Smoke tests of the examples: each runs as a user would run it (a subprocess), with tiny settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_TRAINING = [
    "--max-train-samples", "8", "--max-eval-samples", "4", "--max-steps", "2", "--batch-size", "2",
    "--max-seq-length", "128", "--doc-stride", "32", "--max-segments", "2", "--vocab-size", "400",
    "--memory-tokens", "2", "--memory-slots", "4", "--num-heads", "2",
    "--model-shape", "d_model=32,n_layer=1,n_head=2,d_inner=64",
]


def run_example(script: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / script), *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def differentiable_run(tmp_path_factory, data_dir):
    output_dir = tmp_path_factory.mktemp("differentiable")
    stdout = run_example("train_with_differentiable_memory.py", *TINY_TRAINING, "--output-dir", str(output_dir),
                         "--analyze-memory")
    return output_dir, stdout


def test_train_with_differentiable_memory_saves_the_requested_memory(differentiable_run):
    output_dir, stdout = differentiable_run
    config = json.loads((output_dir / "final" / "config.json").read_text())
    assert (config["memory_impl"], config["memory_slots"], config["memory_num_heads"]) == ("differentiable", 4, 2)
    assert config["memory_num_tokens"] == 2
    assert "eval_exact" in json.loads((output_dir / "final" / "eval_results.json").read_text())
    assert "EM " in stdout


def test_memory_analysis_of_the_trained_model_sees_memory_change(differentiable_run):
    output_dir, _ = differentiable_run
    analysis = output_dir / "memory_analysis"
    for name in ("read_attention_heatmap.png", "read_attention_per_head.png", "memory_slot_updates.png"):
        assert (analysis / name).stat().st_size > 1000
    report = json.loads((analysis / "memory_analysis.json").read_text())
    assert report["memory_impl"] == "differentiable" and report["segments"] > 1
    assert len(report["read_attention_per_slot"]) == 2
    # Attention shares are probabilities; the memory is written after every segment.
    assert all(0 < share < 1 for share in report["read_attention_share_per_segment"])
    assert all(update > 0 for update in report["slot_update_per_segment"])


def test_validate_answer_spans_maps_answers_back_to_their_characters(differentiable_run, tmp_path):
    output_dir, _ = differentiable_run
    report_path = tmp_path / "spans.json"
    stdout = run_example(
        "validate_answer_spans.py", "--dataset", "squad_v2", "--split", "validation", "--model-path",
        str(output_dir / "final"), "--max-examples", "60", "--max-seq-length", "128", "--doc-stride", "32",
        "--max-n-segs", "1", "--output", str(report_path),
    )
    report = json.loads(report_path.read_text())
    verdicts = report["verdicts"]
    assert sum(verdicts.values()) == report["questions_after_cleaning"] == 60
    assert report["segmentation"]["memory_tokens"] == 2
    assert verdicts.get("exact", 0) > 0 and verdicts.get("unanswerable", 0) > 0
    # With one segment per document, answers further in are cut, and counted as such.
    assert verdicts.get("answer not in kept segments (max_n_segs)", 0) > 0
    assert "wrong text" not in verdicts and "label or layout error" not in verdicts
    assert "exact character match" in stdout


@pytest.mark.slow
def test_analyze_memory_attention_without_a_checkpoint(tmp_path, data_dir):
    stdout = run_example("analyze_memory_attention.py", "--output-dir", str(tmp_path), "--max-segments", "3",
                         "--memory-impl", "differentiable", "--memory-tokens", "4")
    report = json.loads((tmp_path / "memory_analysis.json").read_text())
    assert report["segments"] == 3 and report["memory_impl"] == "differentiable"
    assert "wrote" in stdout


@pytest.mark.parametrize("script", ["analyze_gmm_experts.py", "analyze_memory_attention.py"])
def test_analysis_examples_name_a_missing_checkpoint_folder(script, tmp_path):
    missing = str(tmp_path / "outputs" / "never-trained" / "final")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / script), "--model-path", missing],
                            cwd=REPO_ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"--model-path {missing} is not a folder" in result.stderr and "train one first" in result.stderr
