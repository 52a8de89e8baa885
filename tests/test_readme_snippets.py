"""The README's Python snippets run as written, with local stand-ins for Hub checkpoints."""

import re
from pathlib import Path

import torch
from transformers import XLNetConfig, XLNetForQuestionAnsweringSimple

from hf_memory import train_xlnet_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet(heading: str) -> str:
    """The first ```python block after `heading`."""
    text = README.read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)


def test_long_document_qa_snippet_carries_memory_through_every_segment(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Mary went to the kitchen. John moved to the garden. Where is Mary?\n" * 50, encoding="utf-8")
    tokenizer = train_xlnet_tokenizer([corpus], vocab_size=200)
    checkpoint = tmp_path / "xlnet"
    torch.manual_seed(0)
    XLNetForQuestionAnsweringSimple(XLNetConfig(vocab_size=len(tokenizer), d_model=32, n_layer=1, n_head=4,
                                                d_inner=64)).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    code = readme_snippet("### Long-document QA with memory").replace('"xlnet-base-cased"', repr(str(checkpoint)))
    scope = {"question": "Where is Mary?", "long_document": "Mary went to the kitchen. John moved to the garden. " * 40}
    exec(code, scope)
    document, model = scope["document"], scope["model"]
    assert document["input_ids"].shape[1] > 3  # several segments were read in order
    assert model.config.mem_read_token_ids == scope["read_ids"]
    assert scope["memory"].shape[0] == 1 and scope["out"].start_logits.shape == document["input_ids"][:, 0].shape
