"""run_qa.py end to end on real SQuAD v2 data: from scratch with a YAML args file, adding memory to the resulting
no-memory checkpoint, remote-code loading of the output, bad input, and 2-process CPU DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config_overrides", "d_model=32,n_layer=1,n_head=2,d_inner=64",
    "--max_seq_length", "96", "--doc_stride", "16", "--max_query_length", "24", "--max_n_segs", "3",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3",
    "--report_to", "none", "--disable_tqdm", "True", "--save_strategy", "no", "--seed", "0",
]
OUTPUT_FILES = (
    "eval_results.json", "eval_predictions.json", "eval_nbest_predictions.json", "eval_null_odds.json",
    "all_results.json", "README.md", "config.json", "model.safetensors", "modeling_memxlnet.py",
    "qa_processing_memxlnet.py", "tokenizer.json",
)


def run(args, timeout=300, launcher=(sys.executable,)):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [*launcher, str(REPO_ROOT / "run_qa.py"), *map(str, args)], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, timeout=timeout,
    )
    return result


def check_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def yaml_args(path, squad_file, output_dir):
    """The TINY flags plus a from-scratch no-memory run, as a typed YAML mapping."""
    options = {key.lstrip("-"): value for key, value in zip(TINY[0::2], TINY[1::2])}
    options.update(
        train_file=str(squad_file), validation_file=str(squad_file), version_2_with_negative=True, model_type="xlnet",
        train_tokenizer_vocab_size=400, max_train_samples=24, max_eval_samples=16, num_train_epochs=1, do_train=True,
        do_eval=True, output_dir=str(output_dir),
    )
    path.write_text(yaml.safe_dump(options), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def no_memory_checkpoint(tmp_path_factory, squad_small_file):
    folder = tmp_path_factory.mktemp("run_qa")
    check_ok(run([yaml_args(folder / "args.yaml", squad_small_file, folder / "base")]))
    return folder / "base"


def test_from_scratch_with_yaml_args_writes_official_outputs(no_memory_checkpoint):
    for name in OUTPUT_FILES:
        assert (no_memory_checkpoint / name).is_file(), name
    config = json.loads((no_memory_checkpoint / "config.json").read_text())
    assert config["memory_num_tokens"] == 0 and config["d_model"] == 32 and config["n_layer"] == 1
    results = json.loads((no_memory_checkpoint / "eval_results.json").read_text())
    for key in ("exact", "f1", "total", "HasAns_exact", "NoAns_f1", "best_exact", "best_exact_thresh", "best_f1",
                "best_f1_thresh"):
        assert f"eval_{key}" in results, key
    assert results["eval_total"] == 16
    predictions = json.loads((no_memory_checkpoint / "eval_predictions.json").read_text())
    null_odds = json.loads((no_memory_checkpoint / "eval_null_odds.json").read_text())
    nbest = json.loads((no_memory_checkpoint / "eval_nbest_predictions.json").read_text())
    assert len(predictions) == len(null_odds) == len(nbest) == 16
    assert all((text == "") == (null_odds[qid] > 0.0) for qid, text in predictions.items())
    card = (no_memory_checkpoint / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["pipeline_tag"] == "question-answering" and "custom_code" in metadata["tags"]
    reported = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert reported["exact_match"] == pytest.approx(results["eval_exact"], abs=1e-3)
    assert "trust_remote_code=True" in card


def test_adding_memory_to_a_checkpoint_then_loading_it_as_remote_code(no_memory_checkpoint, tmp_path,
                                                                      squad_small_file):
    output = tmp_path / "with_memory"
    args = [
        "--model_name_or_path", no_memory_checkpoint, "--memory_num_tokens", "2", "--train_file", squad_small_file,
        "--validation_file", squad_small_file, "--test_file", squad_small_file, "--version_2_with_negative", "True",
        "--max_train_samples", "16", "--max_eval_samples", "8", "--max_predict_samples", "8",
        "--do_train", "--do_eval", "--do_predict", "--num_train_epochs", "1", "--bptt_depth", "1",
        "--use_global_softmax", "True", "--pad_to_max_length", "False", "--reading_order", "backward",
        "--output_dir", output, *TINY[2:],
    ]
    result = run(args)
    check_ok(result)
    assert "--pad_to_max_length False has no effect" in result.stdout  # an official flag we cannot honour warns
    config = json.loads((output / "config.json").read_text())
    assert config["memory_num_tokens"] == 2 and len(config["mem_read_token_ids"]) == 2
    # global softmax: the segment read last (the first one, reading backward) holds the no-answer score
    assert config["null_score_reduction"] == "last" and config["reading_order"] == "backward"
    # memory options shape the memory added to a model: on a memory checkpoint a different value is refused
    result = run(["--model_name_or_path", output, "--memory_update", "none", "--validation_file", squad_small_file,
                  "--do_eval", "--output_dir", tmp_path / "refused"], timeout=120)
    assert result.returncode != 0
    assert "--memory_update none differs from the checkpoint's memory_update='gated'" in result.stderr
    assert "AutoModelForQuestionAnswering" in config["auto_map"]
    assert (output / "predict_predictions.json").is_file()
    # a fresh process where hf_memory cannot be imported loads the checkpoint through trust_remote_code
    script = (
        "import sys; sys.modules['hf_memory'] = None\n"
        "import torch\n"
        "from transformers import AutoModelForQuestionAnswering, AutoTokenizer\n"
        f"path = {str(output)!r}\n"
        "model = AutoModelForQuestionAnswering.from_pretrained(path, trust_remote_code=True)\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        "ids = tok('[MEM_READ_0][MEM_READ_1] a b <sep> q <sep> [MEM_WRITE_0][MEM_WRITE_1]', return_tensors='pt')\n"
        "out = model(**ids)\n"
        "print('OK', tuple(out.memory_state.shape))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "OK (1, 2, 32)" in result.stdout, result.stderr[-3000:]


def test_bad_input_fails_early_with_a_clear_message(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [{"paragraphs": [', encoding="utf-8")
    result = run(["--train_file", broken, "--do_train", "--output_dir", tmp_path / "out",
                  "--train_tokenizer_vocab_size", "100"], timeout=120)
    assert result.returncode != 0 and "is not valid JSON" in result.stderr
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1"}]}]}]}))
    result = run(["--train_file", missing, "--do_train", "--output_dir", tmp_path / "out"], timeout=120)
    assert result.returncode != 0 and "missing field 'question'" in result.stderr
    result = run(["--model_name_or_path", tmp_path / "no_such_checkpoint", "--train_file", missing, "--do_train",
                  "--output_dir", tmp_path / "out"], timeout=120)
    assert result.returncode != 0 and "no_such_checkpoint is not a folder (nor a Hub id)" in result.stderr
    result = run(["--reading_order", "sideways", "--train_file", missing, "--do_train", "--output_dir",
                  tmp_path / "out"], timeout=120)
    assert result.returncode != 0 and "Unknown reading_order='sideways'" in result.stderr


def test_two_process_cpu_ddp(tmp_path, squad_small_file):
    output = tmp_path / "ddp"
    args = [
        "--train_file", squad_small_file, "--validation_file", squad_small_file, "--version_2_with_negative", "True",
        "--train_tokenizer_vocab_size", "400", "--memory_num_tokens", "2", "--max_train_samples", "32",
        "--max_eval_samples", "16", "--do_train", "--do_eval", "--num_train_epochs", "2", "--bptt_depth", "2",
        "--progressive_segments", "2,3", "--use_cpu", "True",
        "--output_dir", output, *TINY,
    ]
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533")
    result = run(args, timeout=400, launcher=launcher)
    check_ok(result)
    assert "world size: 2" in result.stdout + result.stderr
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 2 * 32 // (4 * 2)  # 2 epochs x (32 documents / (4 per rank x 2 ranks))
    assert json.loads((output / "eval_results.json").read_text())["eval_total"] == 16
