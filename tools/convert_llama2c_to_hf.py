"""Convert a llama2.c "legacy" fp32 checkpoint and its SentencePiece tokenizer to `LlamaForCausalLM` + a Llama-style fast tokenizer.

llama2.c (github.com/karpathy/llama2.c) stores a 7-int32 header followed by fp32 tensors. Two details matter for an
exact conversion:

* llama2.c applies rotary embeddings to interleaved (even, odd) pairs of each head, while Hugging Face Llama rotates
  the first half of the head against the second half. The rows of `wq` and `wk` are permuted so that both layouts
  compute the same attention scores.
* The tokenizer is a SentencePiece model whose pieces are single characters (plus the `▁` word marker), so it maps
  to a Llama-style BPE tokenizer with an empty merge list (see `convert_sentencepiece_tokenizer`).

Usage:
    python tools/convert_llama2c_to_hf.py --checkpoint model5000.bin --tokenizer tok105.model --output_dir babyllama
"""

import argparse
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


HEADER_FORMAT = "7i"
DEFAULT_ROPE_THETA = 10000.0


@dataclass
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size


def read_llama2c_checkpoint(path: str) -> tuple[Llama2cHeader, dict[str, np.ndarray]]:
    """Reads the header and every tensor of a legacy llama2.c checkpoint, in file order."""
    with open(path, "rb") as handle:
        raw = handle.read()
    header_size = struct.calcsize(HEADER_FORMAT)
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = struct.unpack(
        HEADER_FORMAT, raw[:header_size]
    )
    header = Llama2cHeader(
        dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab_size), seq_len, shared_classifier=vocab_size > 0
    )
    layer_shapes = [
        ("token_embedding", (header.vocab_size, dim)),
        ("rms_att", (n_layers, dim)),
        ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, header.kv_dim, dim)),
        ("wv", (n_layers, header.kv_dim, dim)),
        ("wo", (n_layers, dim, dim)),
        ("rms_ffn", (n_layers, dim)),
        ("w1", (n_layers, hidden_dim, dim)),
        ("w2", (n_layers, dim, hidden_dim)),
        ("w3", (n_layers, hidden_dim, dim)),
        ("rms_final", (dim,)),
        ("freq_cis_real", (seq_len, header.head_size // 2)),
        ("freq_cis_imag", (seq_len, header.head_size // 2)),
    ]
    if not header.shared_classifier:
        layer_shapes.append(("classifier", (header.vocab_size, dim)))
    weights = np.frombuffer(raw, dtype=np.float32, offset=header_size)
    tensors, offset = {}, 0
    for name, shape in layer_shapes:
        size = math.prod(shape)
        tensors[name] = weights[offset : offset + size].reshape(shape)
        offset += size
    if offset != weights.size:
        raise ValueError(
            f"{path}: read {offset} floats but the file holds {weights.size}; it is not a legacy llama2.c checkpoint "
            "(the newer 'version 1+' export with a magic number is not supported)."
        )
    return header, tensors


def infer_rope_theta(header: Llama2cHeader, freq_cis_real: np.ndarray) -> float:
    """Recovers the rotary base from the stored cos table (position 1, pair 1): cos(theta ** (-2 / head_size))."""
    if header.head_size < 4:
        return DEFAULT_ROPE_THETA
    frequency = math.acos(float(freq_cis_real[1, 1]))
    return float(round(frequency ** (-header.head_size / 2)))


def interleaved_to_half_split(weight: np.ndarray, num_heads: int) -> torch.Tensor:
    """Reorders each head's output rows from (x0, y0, x1, y1, ...) to (x0, x1, ..., y0, y1, ...)."""
    rows, columns = weight.shape
    head_size = rows // num_heads
    return (
        torch.from_numpy(weight.copy())
        .view(num_heads, head_size // 2, 2, columns)
        .transpose(1, 2)
        .reshape(rows, columns)
    )


def convert_llama2c_checkpoint(path: str) -> LlamaForCausalLM:
    header, tensors = read_llama2c_checkpoint(path)
    config = LlamaConfig(
        vocab_size=header.vocab_size,
        hidden_size=header.dim,
        intermediate_size=header.hidden_dim,
        num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        max_position_embeddings=header.seq_len,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": infer_rope_theta(header, tensors["freq_cis_real"])},
        tie_word_embeddings=header.shared_classifier,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)

    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.copy())

    state_dict = {
        "model.embed_tokens.weight": as_tensor(tensors["token_embedding"]),
        "model.norm.weight": as_tensor(tensors["rms_final"]),
        "lm_head.weight": as_tensor(tensors.get("classifier", tensors["token_embedding"])),
    }
    for index in range(header.n_layers):
        prefix = f"model.layers.{index}."
        state_dict.update(
            {
                prefix + "input_layernorm.weight": as_tensor(tensors["rms_att"][index]),
                prefix + "self_attn.q_proj.weight": interleaved_to_half_split(tensors["wq"][index], header.n_heads),
                prefix + "self_attn.k_proj.weight": interleaved_to_half_split(tensors["wk"][index], header.n_kv_heads),
                prefix + "self_attn.v_proj.weight": as_tensor(tensors["wv"][index]),
                prefix + "self_attn.o_proj.weight": as_tensor(tensors["wo"][index]),
                prefix + "post_attention_layernorm.weight": as_tensor(tensors["rms_ffn"][index]),
                prefix + "mlp.gate_proj.weight": as_tensor(tensors["w1"][index]),
                prefix + "mlp.down_proj.weight": as_tensor(tensors["w2"][index]),
                prefix + "mlp.up_proj.weight": as_tensor(tensors["w3"][index]),
            }
        )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def convert_sentencepiece_tokenizer(path: str, model_max_length: int) -> PreTrainedTokenizerFast:
    """Rebuilds the character-level SentencePiece model as a `tokenizers` pipeline with identical ids.

    The pipeline is Llama's (Metaspace `▁` with a prepended word marker, `<s>` prepended by the post-processor) plus
    what SentencePiece does and `LlamaTokenizer` does not: unknown characters map to `<unk>` (runs fused into one,
    as SentencePiece does) and runs of spaces collapse (`remove_extra_whitespaces`). It is saved as a plain
    `tokenizer.json` loaded by `PreTrainedTokenizerFast`, because `LlamaTokenizer.from_pretrained` rebuilds its own
    pipeline from the vocabulary and would drop both.
    """
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=path)
    pieces = [processor.id_to_piece(index) for index in range(processor.get_piece_size())]
    multi_character = [
        piece
        for index, piece in enumerate(pieces)
        if len(piece) > 1 and not (processor.is_control(index) or processor.is_unknown(index))
    ]
    if multi_character:
        raise ValueError(
            f"{path} holds multi-character pieces ({multi_character[:5]}); this converter only handles "
            "character-level SentencePiece models (merges are not recoverable without protobuf)."
        )
    unk_token, bos_token, eos_token = (
        processor.id_to_piece(processor.unk_id()),
        processor.id_to_piece(processor.bos_id()),
        processor.id_to_piece(processor.eos_id()),
    )
    backend = Tokenizer(
        models.BPE(vocab={piece: index for index, piece in enumerate(pieces)}, merges=[], unk_token=unk_token, fuse_unk=True)
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos_token} $A",
        pair=f"{bos_token} $A {bos_token} $B",
        special_tokens=[(bos_token, processor.bos_id())],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=unk_token,
        bos_token=bos_token,
        eos_token=eos_token,
        model_max_length=model_max_length,
        padding_side="right",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="legacy llama2.c .bin file")
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model file trained for the checkpoint")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)

    model = convert_llama2c_checkpoint(args.checkpoint)
    tokenizer = convert_sentencepiece_tokenizer(args.tokenizer, model.config.max_position_embeddings)
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the checkpoint's vocab_size is {model.config.vocab_size}; "
            "pass the tokenizer the checkpoint was trained with."
        )
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved LlamaForCausalLM ({model.num_parameters():,} parameters) and its tokenizer to {args.output_dir}")


if __name__ == "__main__":
    main()
