"""A real pretrained model: the llama2.c babyllama converted to LlamaForCausalLM, with and without a memory adapter."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data"))
BABYLLAMA_DIR = DATA_DIR / "models" / "babyllama-tok105"
TINYSTORIES = DATA_DIR / "text" / "tinystories-valid-head.txt"
PUBLISHED_NLL = 0.724  # ../shared/data/README.md: independent numpy forward, first 60 paragraphs, seq_len 256
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}

pytestmark = pytest.mark.skipif(
    not (BABYLLAMA_DIR / "model5000.bin").is_file() or not TINYSTORIES.is_file(),
    reason=f"babyllama checkpoint or TinyStories text not found under {DATA_DIR} (set HF_MEMORY_DATA)",
)


def tinystories_paragraphs(start: int, stop: int) -> list[str]:
    paragraphs = [p.strip() for p in TINYSTORIES.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return paragraphs[start:stop]


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("babyllama-hf")
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "convert_llama2c_to_hf.py"),
            "--checkpoint",
            str(BABYLLAMA_DIR / "model5000.bin"),
            "--tokenizer",
            str(BABYLLAMA_DIR / "tok105.model"),
            "--output_dir",
            str(output_dir),
        ],
        check=True,
        env=SUBPROCESS_ENV,
        capture_output=True,
    )
    return output_dir


@pytest.fixture(scope="module")
def model_and_tokenizer(converted_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(converted_dir).eval(), AutoTokenizer.from_pretrained(converted_dir)


def mean_token_nll(model, tokenizer, paragraphs: list[str]) -> float:
    """Token-weighted NLL with each paragraph as one `<s>`-prefixed sequence cut to the model's 256 positions."""
    total, count = 0.0, 0
    with torch.no_grad():
        for paragraph in paragraphs:
            ids = tokenizer(paragraph, truncation=True, max_length=model.config.max_position_embeddings)["input_ids"]
            input_ids = torch.tensor([ids])
            loss = model(input_ids=input_ids, labels=input_ids).loss
            total += loss.item() * (len(ids) - 1)
            count += len(ids) - 1
    return total / count


def test_tokenizer_matches_sentencepiece(model_and_tokenizer):
    sentencepiece = pytest.importorskip("sentencepiece")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(BABYLLAMA_DIR / "tok105.model"))
    _, tokenizer = model_and_tokenizer
    texts = tinystories_paragraphs(0, 60) + ["two  spaces", " edges ", "new\nline", "unknown ☃☃ chars", ""]
    for text in texts:
        assert tokenizer(text)["input_ids"] == [processor.bos_id()] + processor.encode(text), text
    assert tokenizer.decode(tokenizer("Once upon a time.")["input_ids"], skip_special_tokens=True) == (
        "Once upon a time."
    )


def test_converted_loss_matches_published_figure(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    nll = mean_token_nll(model, tokenizer, tinystories_paragraphs(0, 60))
    assert abs(nll - PUBLISHED_NLL) < 0.01, nll
    assert nll < math.log(model.config.vocab_size) / 4


def test_rotary_permutation_is_required(converted_dir):
    """Without the interleaved -> half-split permutation of wq/wk the model is much worse: the test can fail."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(converted_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted_dir)
    config = model.config
    for layer in model.model.layers:
        for projection, heads in ((layer.self_attn.q_proj, config.num_attention_heads),
                                  (layer.self_attn.k_proj, config.num_key_value_heads)):
            weight = projection.weight.data
            rows, columns = weight.shape
            # undo the permutation: half-split back to interleaved
            projection.weight.data = weight.view(heads, 2, rows // heads // 2, columns).transpose(1, 2).reshape(
                rows, columns
            )
    assert mean_token_nll(model, tokenizer, tinystories_paragraphs(0, 10)) > PUBLISHED_NLL + 0.2


def test_memory_adapter_leaves_pretrained_loss_unchanged(model_and_tokenizer):
    from hf_memory.adapters import MemoryAdapterConfig, get_memory_model

    model, tokenizer = model_and_tokenizer
    paragraphs = tinystories_paragraphs(0, 8)
    base_nll = mean_token_nll(model, tokenizer, paragraphs)
    adapted = get_memory_model(model, MemoryAdapterConfig(num_memory_tokens=64, use_chapters=True, num_chapters=4))
    try:
        assert mean_token_nll(adapted, tokenizer, paragraphs) == base_nll
    finally:
        adapted.unload()


def run_clm(args: list[str]) -> dict:
    """run_clm.py in a subprocess; returns its eval_results.json."""
    output_dir = Path(args[args.index("--output_dir") + 1])
    result = subprocess.run([sys.executable, str(REPO_ROOT / "run_clm.py"), *args], cwd=REPO_ROOT,
                            env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output_dir / "eval_results.json").read_text())


@pytest.fixture(scope="module")
def story_files(tmp_path_factory) -> tuple[Path, Path]:
    """Training paragraphs disjoint from the validation paragraphs (the first 60, as the published figure)."""
    folder = tmp_path_factory.mktemp("stories")
    (folder / "train.txt").write_text("\n".join(tinystories_paragraphs(200, 900)) + "\n", encoding="utf-8")
    (folder / "valid.txt").write_text("\n".join(tinystories_paragraphs(0, 60)) + "\n", encoding="utf-8")
    return folder / "train.txt", folder / "valid.txt"


@pytest.mark.parametrize(
    "steps", [pytest.param(30, id="30-steps"), pytest.param(300, id="300-steps", marks=pytest.mark.slow)]
)
def test_training_only_the_adapter_with_run_clm_lowers_validation_loss(converted_dir, story_files, tmp_path, steps):
    train_file, valid_file = story_files
    common = ["--model_name_or_path", str(converted_dir), "--validation_file", str(valid_file), "--block_size", "256",
              "--per_device_eval_batch_size", "8", "--report_to", "none", "--disable_tqdm", "True", "--seed", "0"]
    before = run_clm([*common, "--do_eval", "--output_dir", str(tmp_path / "base")])
    after = run_clm([
        *common, "--train_file", str(train_file), "--do_train", "--do_eval", "--output_dir", str(tmp_path / "adapter"),
        "--memory_adapter", "default", "--memory_adapter_overrides", "num_memory_tokens=64", "--max_steps", str(steps),
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--save_strategy", "no",
    ])
    # Only the adapter was trained and saved: the base weights are not in the output folder.
    saved = sorted(path.name for path in (tmp_path / "adapter").iterdir())
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    assert after["eval_loss"] < before["eval_loss"] - 0.01, (before["eval_loss"], after["eval_loss"])
