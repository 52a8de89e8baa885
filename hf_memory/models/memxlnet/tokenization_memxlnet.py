"""Memory special tokens: `[MEM_READ_i]` / `[MEM_WRITE_i]`.

Lives in the model folder so that checkpoints (remote code) and the pipeline can use it without hf_memory.
"""

MEM_READ_TEMPLATE = "[MEM_READ_{}]"
MEM_WRITE_TEMPLATE = "[MEM_WRITE_{}]"


def memory_token_strings(num_memory_tokens: int) -> tuple[list[str], list[str]]:
    """The `[MEM_READ_i]` and `[MEM_WRITE_i]` strings for `num_memory_tokens` slots."""
    return (
        [MEM_READ_TEMPLATE.format(i) for i in range(num_memory_tokens)],
        [MEM_WRITE_TEMPLATE.format(i) for i in range(num_memory_tokens)],
    )


def add_memory_tokens(tokenizer, num_memory_tokens: int) -> tuple[list[int], list[int]]:
    """Add `[MEM_READ_i]` then `[MEM_WRITE_i]` special tokens and return their ids `(read_ids, write_ids)`.

    Idempotent: tokens already present keep their ids. New tokens are appended in the order READ_0..READ_{m-1},
    WRITE_0..WRITE_{m-1}, the order `enable_memory` assumes when it grows the embedding matrix of a model whose
    vocabulary matched the tokenizer.
    """
    if num_memory_tokens < 0:
        raise ValueError(f"num_memory_tokens must be >= 0, got {num_memory_tokens}.")
    read_tokens, write_tokens = memory_token_strings(num_memory_tokens)
    vocab = tokenizer.get_vocab()
    missing = [token for token in read_tokens + write_tokens if token not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(read_tokens), tokenizer.convert_tokens_to_ids(write_tokens)


def get_memory_token_ids(tokenizer, num_memory_tokens: int) -> tuple[list[int], list[int]]:
    """The ids of the memory tokens, or a ValueError saying how to add them."""
    read_tokens, write_tokens = memory_token_strings(num_memory_tokens)
    vocab = tokenizer.get_vocab()
    missing = [token for token in read_tokens + write_tokens if token not in vocab]
    if missing:
        raise ValueError(
            f"The tokenizer lacks {len(missing)} memory token(s) (e.g. {missing[0]!r}) needed for "
            f"memory_num_tokens={num_memory_tokens}. Fix: call hf_memory.add_memory_tokens(tokenizer, "
            f"{num_memory_tokens}) and resize the model's embeddings (model.enable_memory(m, tokenizer) does both)."
        )
    return [vocab[t] for t in read_tokens], [vocab[t] for t in write_tokens]
