import json

import pytest
from transformers import AutoTokenizer

from hf_memory import add_memory_tokens, get_memory_token_ids, train_xlnet_tokenizer
from hf_memory.tokenization import main as train_tokenizer_cli


def test_trained_tokenizer_follows_xlnet_conventions(xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    assert tokenizer.padding_side == "left"
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (5, 1, 2)
    encoded = tokenizer("The Normans ruled Normandy.", "Who ruled?", padding="max_length", max_length=32)
    ids = encoded["input_ids"]
    assert ids[-1] == tokenizer.cls_token_id and ids[0] == tokenizer.pad_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith("The Normans ruled Normandy.")


def test_memory_tokens_are_atomic_appended_and_idempotent(xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    base_size = len(tokenizer)
    read_ids, write_ids = add_memory_tokens(tokenizer, 3)
    assert read_ids + write_ids == list(range(base_size, base_size + 6))
    assert add_memory_tokens(tokenizer, 3) == (read_ids, write_ids)
    pieces = tokenizer.tokenize("[MEM_READ_2] Paris [MEM_WRITE_0]")
    assert pieces[0] == "[MEM_READ_2]" and pieces[-1] == "[MEM_WRITE_0]"
    assert get_memory_token_ids(tokenizer, 3) == (read_ids, write_ids)


def test_missing_memory_tokens_error_names_the_fix(xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    with pytest.raises(ValueError, match="add_memory_tokens"):
        get_memory_token_ids(tokenizer, 2)
    with pytest.raises(ValueError, match="num_memory_tokens"):
        add_memory_tokens(tokenizer, -1)


def test_cli_trains_from_text_and_squad(tmp_path, squad_small_file):
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("Memory tokens carry state.\nAcross segments of long documents.\n")
    out = tmp_path / "tok"
    train_tokenizer_cli([str(text_file), str(squad_small_file), "--output_dir", str(out), "--vocab_size", "300",
                         "--memory_num_tokens", "2"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert get_memory_token_ids(tokenizer, 2)[0] == [len(tokenizer) - 4, len(tokenizer) - 3]
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 512


def test_bad_training_input_is_reported(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        train_xlnet_tokenizer([tmp_path / "missing.txt"], vocab_size=100)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "v2"}))
    with pytest.raises(ValueError, match="SQuAD-format"):
        train_xlnet_tokenizer([bad], vocab_size=100)
