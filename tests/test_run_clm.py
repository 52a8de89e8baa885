"""run_clm.py end to end on real TinyStories text: from scratch, trained tokenizer, memory LR group, router logs."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data"))
TINYSTORIES = DATA_DIR / "text" / "tinystories-valid-head.txt"

pytestmark = pytest.mark.skipif(not TINYSTORIES.is_file(), reason=f"{TINYSTORIES} not found (set HF_MEMORY_DATA)")

sys.path.insert(0, str(REPO_ROOT))
import run_clm  # noqa: E402

TINY_OVERRIDES = (
    "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=2,"
    "num_memory_tokens=64,use_chapters=True,num_chapters=8,top_k_chapters=2,routing_chunk_size=16"
)


def write_slices(tmp_path: Path) -> tuple[Path, Path]:
    lines = TINYSTORIES.read_text(encoding="utf-8").splitlines()
    train, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    train.write_text("\n".join(lines[:300]), encoding="utf-8")
    valid.write_text("\n".join(lines[300:360]), encoding="utf-8")
    return train, valid


def as_argv(args: dict) -> list[str]:
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def base_args(tmp_path: Path) -> dict:
    train, valid = write_slices(tmp_path)
    return {
        "model_type": "memory_transformer",
        "config_overrides": TINY_OVERRIDES,
        "train_file": str(train),
        "validation_file": str(valid),
        "train_tokenizer_vocab_size": 400,
        "block_size": 64,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "max_steps": 6,
        "learning_rate": 3e-3,
        "memory_learning_rate": 1e-2,
        "logging_steps": 2,
        "max_eval_samples": 8,
        "do_train": True,
        "do_eval": True,
        "output_dir": str(tmp_path / "out"),
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }


def test_run_clm_end_to_end_from_json_args(tmp_path):
    args = base_args(tmp_path)
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(args))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_clm.py"), str(args_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    out = Path(args["output_dir"])
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert math.isclose(eval_results["perplexity"], math.exp(eval_results["eval_loss"]), rel_tol=1e-6)
    assert eval_results["eval_loss"] < math.log(400)  # learned something beyond a uniform guess
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert logged and all("router_load_balance" in entry and "router_usage_entropy" in entry for entry in logged)
    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config["model_type"] == "memory_transformer" and saved_config["vocab_size"] == 400
    assert (out / "modeling_memory_transformer.py").is_file() and (out / "tokenizer.json").is_file()


def test_memory_learning_rate_gets_its_own_optimizer_groups(tmp_path):
    run_clm.register_memory_transformer()
    model_args, data_args, training_args, memory_args = run_clm.parse_arguments(
        [
            "--model_type", "memory_transformer", "--config_overrides", TINY_OVERRIDES,
            "--train_file", str(TINYSTORIES), "--output_dir", str(tmp_path), "--learning_rate", "1e-3",
            "--memory_learning_rate", "5e-2", "--weight_decay", "0.1", "--use_cpu", "True", "--report_to", "none",
            "--torch_dtype", "float32",
        ]
    )
    assert model_args.dtype == "float32"  # the flag's name before transformers 5 still works
    config = run_clm.build_config(model_args)
    assert config.hidden_size == 32 and config.head_dim == 8 and config.num_key_value_heads == 2
    model = run_clm.AutoModelForCausalLM.from_config(config)
    trainer = run_clm.MemoryLMTrainer(model=model, args=training_args, memory_learning_rate=memory_args.memory_learning_rate)
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        expected = 5e-2 if ("memory_banks." in name or "memory_block." in name) else 1e-3
        assert lr_of[id(param)] == expected, name
        if "memory_banks." in name:
            assert decay_of[id(param)] == 0.0
    assert len(lr_of) == sum(1 for _ in model.parameters())


def test_yaml_args_file_is_parsed(tmp_path):
    args_file = tmp_path / "args.yaml"
    args_file.write_text(
        f"model_type: memory_transformer\ntrain_file: {TINYSTORIES}\noutput_dir: {tmp_path}\n"
        "memory_learning_rate: 0.002\nblock_size: 32\nreport_to: none\n"
    )
    model_args, data_args, training_args, memory_args = run_clm.parse_arguments([str(args_file)])
    assert model_args.model_type == "memory_transformer" and data_args.block_size == 32
    assert memory_args.memory_learning_rate == 0.002


def test_missing_tokenizer_source_is_a_clear_error(tmp_path):
    model_args = run_clm.ModelArguments(model_type="memory_transformer")
    with pytest.raises(ValueError, match="train_tokenizer_vocab_size"):
        run_clm.build_tokenizer(model_args, None, "text", str(tmp_path))


def test_a_missing_model_folder_is_named_before_any_work(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(ValueError, match=f"--model_name_or_path {missing} is not a folder"):
        run_clm.main(["--model_name_or_path", str(missing), "--train_file", str(TINYSTORIES), "--do_train",
                      "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
    assert not (tmp_path / "out").exists()


def test_rerun_resumes_from_the_last_checkpoint_in_output_dir(tmp_path):
    """Like run_qa.py (and the official examples before `overwrite_output_dir` went away): a second run with the same
    --output_dir continues from its newest checkpoint instead of starting over (a fresh start with another seed would
    log other losses for steps 1-2)."""
    args = dict(base_args(tmp_path), max_steps=2, logging_steps=1, save_strategy="steps", save_steps=2, do_eval=False)
    argv = as_argv(args)
    out = Path(args["output_dir"])

    def logged_losses():
        state = json.loads((out / "trainer_state.json").read_text())
        return state["global_step"], {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}

    run_clm.main(argv)
    first_step, first_losses = logged_losses()
    assert first_step == 2 and (out / "checkpoint-2").is_dir()
    run_clm.main([*argv, "--max_steps", "3", "--seed", "1"])
    step, losses = logged_losses()
    assert step == 3 and sorted(losses) == [1, 2, 3]
    assert {k: losses[k] for k in (1, 2)} == first_losses


def test_streaming_trains_and_evaluates_from_a_stream(tmp_path):
    """--streaming (official flag): the text files are read as IterableDatasets, the tokenizer is trained on the
    stream, and the step count must come from --max_steps."""
    args = dict(base_args(tmp_path), streaming=True)
    argv = as_argv(args)
    metrics = run_clm.main(argv)
    assert metrics["train_loss"] > 0 and math.isclose(metrics["perplexity"], math.exp(metrics["eval_loss"]))
    assert "train_samples" not in metrics  # a stream has no length
    argv += ["--overwrite_output_dir", "True"]  # the reruns below stop before training
    no_steps = list(argv)
    no_steps[no_steps.index("--max_steps") + 1] = "-1"
    with pytest.raises(ValueError, match="--max_steps"):
        run_clm.main(no_steps)
    without_validation = argv[: argv.index("--validation_file")] + argv[argv.index("--validation_file") + 2 :]
    with pytest.raises(ValueError, match="validation_split_percentage"):
        run_clm.main(without_validation)


def test_overwrite_output_dir_starts_afresh_and_a_non_empty_folder_needs_it(tmp_path):
    args = dict(base_args(tmp_path), max_steps=2, logging_steps=1, save_strategy="steps", save_steps=2, do_eval=False)
    argv = as_argv(args)
    out = Path(args["output_dir"])
    run_clm.main(argv)
    run_clm.main([*argv, "--overwrite_output_dir", "True"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        run_clm.main([*argv, "--output_dir", str(plain)])


def test_block_size_follows_the_official_rule(tmp_path):
    tokenizer = type("Tokenizer", (), {"model_max_length": 2048})()
    config = type("Config", (), {"max_position_embeddings": 512})()
    assert run_clm.resolve_block_size(None, tokenizer, config) == 512  # min(1024, max_position_embeddings)
    assert run_clm.resolve_block_size(4096, tokenizer, config) == 2048  # capped at model_max_length
    config.max_position_embeddings = 4096
    assert run_clm.resolve_block_size(None, tokenizer, config) == 2048
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.\nThe end.\n", encoding="utf-8")
    args = dict(base_args(tmp_path), train_file=str(short), train_tokenizer_vocab_size=300)
    with pytest.raises(ValueError, match="shorter than one block"):
        run_clm.main(as_argv(args))


def test_validation_split_holds_out_the_first_rows_like_the_official_script(tmp_path):
    train, _ = write_slices(tmp_path)
    data_args = run_clm.DataTrainingArguments(train_file=str(train), validation_split_percentage=10)
    raw = run_clm.load_raw_datasets(data_args, run_clm.ModelArguments(model_type="memory_transformer"))
    rows = train.read_text(encoding="utf-8").split("\n")
    assert [text.rstrip("\n") for text in raw["validation"]["text"]] == rows[: len(raw["validation"])]
    assert len(raw["validation"]) == round(len(rows) * 0.1)
    with pytest.raises(ValueError, match="validation_split_percentage 0"):
        run_clm.load_raw_datasets(run_clm.DataTrainingArguments(train_file=str(train), validation_split_percentage=0),
                                  run_clm.ModelArguments(model_type="memory_transformer"))


def test_csv_files_train_like_text_files(tmp_path):
    train, valid = write_slices(tmp_path)
    for path in (train, valid):
        rows = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
        with open(path.with_suffix(".csv"), "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["story"])
            writer.writerows([row] for row in rows)
    args = dict(base_args(tmp_path), train_file=str(train.with_suffix(".csv")),
                validation_file=str(valid.with_suffix(".csv")), max_steps=2)
    metrics = run_clm.main(as_argv(args))
    assert metrics["train_loss"] > 0 and metrics["eval_samples"] > 0  # the only column, "story", was read
