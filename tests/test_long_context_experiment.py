"""The long-context experiment driver end to end on a tiny configuration: warm start without memory, memory
stage from that checkpoint, evaluation by length through run_qa.py, results JSON and plot (no accuracy targets)."""

import json
import sys
from pathlib import Path

import pytest

from hf_memory.experiments.babilong import find_data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = [
    "--tasks", "qa1", "--variants", "no_memory", "memxlnet_token_gated", "--eval_lengths", "1", "2",
    "--warm_start_segments", "1", "2", "--warm_start_steps", "2", "2", "--parallel_variants", "2",
    "--train_segments", "2", "--memory_steps", "2", "--train_copies", "1",
    "--train_examples", "24", "--eval_examples", "6", "--dev_examples", "4", "--warm_start_extension_steps", "2",
    "--warm_start_max_extensions", "1", "--max_seq_length", "64", "--memory_num_tokens", "2",
    "--model_config", "d_model=32,n_layer=1,n_head=2,d_inner=64", "--vocab_size", "300", "--batch_size", "4",
]


@pytest.fixture(scope="module")
def bench_module():
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import bench_babilong

    return bench_babilong


def test_benchmark_command_runs_every_stage_and_writes_results(bench_module, data_dir, tmp_path):
    import torch

    threads = torch.get_num_threads()
    results = bench_module.main([
        *TINY_FLAGS, "--data_dir", str(data_dir), "--work_dir", str(tmp_path / "work"),
        "--results_dir", str(tmp_path / "results"), "--results_name", "tiny",
    ])
    saved = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert torch.get_num_threads() == threads  # the experiment's single thread does not leak into the caller
    assert (tmp_path / "results" / "tiny.png").stat().st_size > 0
    assert saved["command"].startswith("python bench/bench_babilong.py --tasks qa1")
    for key in ("config", "warm_start", "models", "total_wall_seconds", "platform", "data_dir"):
        assert key in saved, key
    # the 2-step warm start is far below the 95% target on the development questions, so it is extended once
    assert [stage["segments"] for stage in saved["warm_start"]] == [1, 2, 2]
    assert saved["warm_start"][-1]["extension"] == 1 and saved["warm_start"][-1]["steps"] == 2
    assert all(0.0 <= stage["dev_exact_match"] <= 100.0 for stage in saved["warm_start"][1:])
    dev_file = tmp_path / "work" / "data" / "qa1-dev-2seg.json"
    dev_ids = {qa["id"] for doc in json.loads(dev_file.read_text())["data"] for qa in doc["paragraphs"][0]["qas"]}
    assert dev_ids == {f"qa1-c0-2seg-{index}" for index in range(6, 10)}  # the 4 questions after the 6 evaluated
    assert set(saved["models"]) == {"no_memory", "memxlnet_token_gated"}
    warm_start = saved["warm_start"][-1]["checkpoint"]
    for variant, model in saved["models"].items():
        assert model["training"]["steps"] == 2
        assert model["run_qa_flags"][model["run_qa_flags"].index("--model_type") + 1] in ("xlnet", "memxlnet")
        by_length = model["exact_match"]["qa1"]
        assert set(by_length) == {"1", "2"} and all(0.0 <= em <= 100.0 for em in by_length.values())
        checkpoint = Path(model["training"]["checkpoint"])
        config = json.loads((checkpoint / "config.json").read_text())
        assert config["memory_num_tokens"] == (0 if variant == "no_memory" else 2)
        trained = json.loads((checkpoint / "trainer_state.json").read_text())
        assert trained["global_step"] == 2
        # the evaluation is run_qa.py's own eval_results.json on the held-out (test) stories at that length
        evaluation = json.loads((checkpoint / "eval_qa1_2seg" / "eval_results.json").read_text())
        assert evaluation["eval_exact"] == by_length["2"] and evaluation["eval_total"] == 6
    # both models start from the same warm start: the no-memory one keeps its architecture, memory is added
    assert Path(warm_start).name == "warm_start_2seg_more1"
    assert json.loads((Path(warm_start) / "trainer_state.json").read_text())["global_step"] == 2
    assert results["models"]["no_memory"]["exact_match"] == saved["models"]["no_memory"]["exact_match"]


def test_missing_data_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="HF_MEMORY_DATA"):
        find_data_dir(tmp_path)


def test_run_qa_turns_a_no_memory_checkpoint_into_gmm_keeping_its_weights(xlnet_tokenizer_dir):
    """`run_qa.py --model_type gmmxlnet --model_name_or_path <no-memory checkpoint>` (the benchmark's GMM arm)."""
    import torch
    from transformers import AutoTokenizer

    from hf_memory import GMMXLNetConfig, GMMXLNetForQuestionAnswering, MemXLNetConfig, MemXLNetForQuestionAnswering
    from hf_memory.experiments.babilong import load_run_qa

    run_qa = load_run_qa()
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    torch.manual_seed(0)
    base = MemXLNetForQuestionAnswering(MemXLNetConfig(
        vocab_size=len(tokenizer), d_model=32, n_layer=1, n_head=2, d_inner=64, memory_num_tokens=0))
    reference = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    gmm = run_qa.with_new_memory_class(base, GMMXLNetConfig, GMMXLNetForQuestionAnswering, tokenizer, 2,
                                       {"num_memory_experts": 4})
    assert gmm.config.model_type == "gmmxlnet" and gmm.config.num_memory_experts == 4
    assert gmm.config.mem_read_token_ids == [tokenizer.convert_tokens_to_ids(f"[MEM_READ_{i}]") for i in range(2)]
    state = gmm.state_dict()
    for name, tensor in reference.items():
        kept = state[name][: tensor.shape[0]] if name.endswith("word_embedding.weight") else state[name]
        assert torch.equal(kept, tensor), name
    ids = tokenizer("[MEM_READ_0][MEM_READ_1] a b <sep> q <sep> [MEM_WRITE_0][MEM_WRITE_1]", return_tensors="pt")
    output = gmm(**ids)
    assert output.memory_state.shape == (1, 5, 2, 32)
