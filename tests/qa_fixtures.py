"""Shared helpers of the QA tests: a tiny offline tokenizer with memory tokens and a tiny MemXLNet."""

from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering, add_memory_tokens, train_xlnet_tokenizer

WORDS = "alpha beta gamma delta café naïve Zürich 1984 x-ray co-op end. (start) über fjord".split()


def tiny_tokenizer(tmp_path, num_memory_tokens=2, vocab_size=120):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) * 5, encoding="utf-8")
    tokenizer = train_xlnet_tokenizer([corpus], vocab_size=vocab_size)
    read_ids, write_ids = add_memory_tokens(tokenizer, num_memory_tokens) if num_memory_tokens else ([], [])
    return tokenizer, read_ids, write_ids


def tiny_model(tokenizer, read_ids, write_ids, seed=0, **overrides):
    import torch

    torch.manual_seed(seed)
    config = MemXLNetConfig(
        vocab_size=len(tokenizer), d_model=16, n_layer=1, n_head=2, d_inner=32, dropout=0.0,
        memory_num_tokens=len(read_ids), mem_read_token_ids=read_ids or None, mem_write_token_ids=write_ids or None,
        pad_token_id=tokenizer.pad_token_id, **overrides,
    )
    return MemXLNetForQuestionAnswering(config)
