"""Offline tokenizers and memory special tokens.

The Hub's `spiece.model` is unreachable on air-gapped machines, so an XLNet-compatible Unigram tokenizer can be
trained from local text (plain text files or SQuAD-format JSON). Memory tokens are added as special tokens so the
tokenizer never splits them and `decode(..., skip_special_tokens=True)` drops them.
"""

import argparse
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import XLNetTokenizer

from .models.memxlnet.tokenization_memxlnet import add_memory_tokens, get_memory_token_ids, memory_token_strings

# Original XLNet ids 0..8, so XLNetConfig's defaults (pad=5, bos=1, eos=2) stay valid.
XLNET_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]


def iter_text(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yield training text from plain-text files and SQuAD-format JSON files (contexts, questions, answers)."""
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"Tokenizer training file {str(path)!r} does not exist. Fix: pass existing files.")
        if path.suffix == ".json":
            yield from _iter_squad_text(path)
        else:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if line:
                        yield line


def _iter_squad_text(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError(f"{path} is not SQuAD-format JSON: expected a top-level object with a 'data' list.")
    for article in payload["data"]:
        for paragraph in article.get("paragraphs", []):
            yield paragraph["context"]
            for qa in paragraph.get("qas", []):
                yield qa["question"]


def train_xlnet_tokenizer(
    files: Iterable[str | os.PathLike],
    vocab_size: int = 8000,
    model_max_length: int = 512,
    do_lower_case: bool = False,
    num_memory_tokens: int = 0,
) -> XLNetTokenizer:
    """Train an XLNet-style Unigram tokenizer (same normaliser, Metaspace pieces and special ids as XLNet)."""
    if vocab_size <= len(XLNET_SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(XLNET_SPECIAL_TOKENS)} special tokens, got {vocab_size}.")
    raw = Tokenizer(models.Unigram())
    steps = [normalizers.NFKD(), normalizers.StripAccents()]
    if do_lower_case:
        steps.append(normalizers.Lowercase())
    raw.normalizer = normalizers.Sequence(steps)
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=XLNET_SPECIAL_TOKENS, unk_token="<unk>", shrinking_factor=0.75
    )
    raw.train_from_iterator(iter_text(files), trainer=trainer)
    vocab = [tuple(entry) for entry in json.loads(raw.to_str())["model"]["vocab"]]
    tokenizer = XLNetTokenizer(vocab=vocab, unk_id=0, do_lower_case=do_lower_case, model_max_length=model_max_length)
    if num_memory_tokens:
        add_memory_tokens(tokenizer, num_memory_tokens)
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train an XLNet-style tokenizer offline from text or SQuAD JSON.")
    parser.add_argument("files", nargs="+", help="plain-text files and/or SQuAD-format .json files")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--model_max_length", type=int, default=512)
    parser.add_argument("--do_lower_case", action="store_true")
    parser.add_argument("--memory_num_tokens", type=int, default=0, help="also add [MEM_READ_i]/[MEM_WRITE_i]")
    args = parser.parse_args(argv)
    tokenizer = train_xlnet_tokenizer(
        args.files, args.vocab_size, args.model_max_length, args.do_lower_case, args.memory_num_tokens
    )
    tokenizer.save_pretrained(args.output_dir)
    print(f"Saved a {len(tokenizer)}-token XLNet tokenizer to {args.output_dir}")


if __name__ == "__main__":
    main()


CAUSAL_LM_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def train_causal_lm_tokenizer(
    files: Iterable[str | os.PathLike],
    vocab_size: int = 8000,
    model_max_length: int = 2048,
    texts: Iterable[str] | None = None,
):
    """Train a byte-level BPE tokenizer for causal LMs (ids: `<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3).

    Byte-level BPE never produces `<unk>` and round-trips any text. Every encoded text starts with `<s>` (as Llama's
    tokenizer does), so concatenated documents stay separated when `run_clm.py` groups them into blocks. `texts`, when
    given, replaces `files` (e.g. the text column of a JSON dataset).
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if vocab_size <= len(CAUSAL_LM_SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must exceed 260 (256 bytes + 4 special tokens), got {vocab_size}.")
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CAUSAL_LM_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(iter_text(files) if texts is None else texts, trainer=trainer)
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", raw.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
    )
