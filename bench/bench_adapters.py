"""Memory adapter overhead vs. its base Llama: forward time and greedy decoding tokens/s, measured in one run.

Targets (issue 7): forward <= 1.25x the base model's time, decoding >= 0.8x its tokens/s, with 1,024 memory tokens
and chapter routing. Base and adapted model are timed alternately on one thread so machine load hits both; ratios of
the medians and of the fastest repeats are reported. A long-context pair (`--long_seq_len`, the same tokens per
forward in longer rows, and decoding after a prompt of that length) shows how the memory's fixed per-token cost
weighs against self-attention that grows with the context. Takes 2-4 minutes on a 2-core CPU.

    python bench/bench_adapters.py [--quick] [--output bench/results/adapters.json]
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flop_count import count_flops  # noqa: E402
from hf_memory.adapters import MemoryAdapterConfig, get_memory_model  # noqa: E402


def alternating_seconds(base_function, adapted_function, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock seconds of each repeat, alternating base and adapted runs (after one warm-up each)."""
    base_function()
    adapted_function()
    timings = ([], [])
    for _ in range(repeats):
        for function, seconds in zip((base_function, adapted_function), timings):
            start = time.perf_counter()
            function()
            seconds.append(time.perf_counter() - start)
    return timings


def bench_pair(base, adapted, input_ids, prompt, new_tokens: int, repeats: int) -> dict:
    def forward_base():
        with torch.no_grad(), adapted.disable_adapter():
            base(input_ids)

    def forward_adapted():
        with torch.no_grad():
            adapted(input_ids)

    def decode_base():
        with adapted.disable_adapter():
            base.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def decode_adapted():
        adapted.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    base_s, adapter_s = alternating_seconds(forward_base, forward_adapted, repeats)
    forward = {"base_s": statistics.median(base_s), "adapter_s": statistics.median(adapter_s),
               "base_s_best": min(base_s), "adapter_s_best": min(adapter_s)}
    forward["ratio"] = forward["adapter_s"] / forward["base_s"]
    forward["ratio_best"] = forward["adapter_s_best"] / forward["base_s_best"]
    base_s, adapter_s = alternating_seconds(decode_base, decode_adapted, repeats)
    tokens = prompt.shape[0] * new_tokens
    decode = {
        "base_tokens_per_s": tokens / statistics.median(base_s),
        "adapter_tokens_per_s": tokens / statistics.median(adapter_s),
        "base_tokens_per_s_best": tokens / min(base_s),
        "adapter_tokens_per_s_best": tokens / min(adapter_s),
    }
    decode["ratio"] = decode["adapter_tokens_per_s"] / decode["base_tokens_per_s"]
    decode["ratio_best"] = decode["adapter_tokens_per_s_best"] / decode["base_tokens_per_s_best"]
    # what the ratios would be if time followed the matmul FLOPs (see flop_count.py)
    forward["flop_ratio"] = count_flops(forward_adapted) / count_flops(forward_base)
    decode["flop_ratio"] = count_flops(decode_adapted) / count_flops(decode_base)
    return {"forward": forward, "decode": decode}


def trained_adapter(base, adapter_config: MemoryAdapterConfig):
    """An adapter with non-zero output projections, as after training."""
    adapted = get_memory_model(base, adapter_config)
    with torch.no_grad():
        for parameter in adapted.memory_parameters():
            if parameter.dim() == 2 and not parameter.any():
                parameter.normal_(std=0.02)
    return adapted


def print_pair(name: str, measured: dict, repeats: int) -> None:
    forward, decode = measured["forward"], measured["decode"]
    print(
        f"{name:>18}: forward {forward['ratio']:.3f}x base time (best-of-{repeats}: {forward['ratio_best']:.3f}x; "
        f"{forward['adapter_s'] * 1e3:.1f} vs {forward['base_s'] * 1e3:.1f} ms; FLOPs {forward['flop_ratio']:.3f}x), "
        f"decode {decode['ratio']:.3f}x base tokens/s (best: {decode['ratio_best']:.3f}x; "
        f"{decode['adapter_tokens_per_s']:.1f} vs {decode['base_tokens_per_s']:.1f}; at the FLOP ratio "
        f"{1 / decode['flop_ratio']:.3f}x)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer repeats (smoke run)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "adapters.json"))
    parser.add_argument("--threads", type=int, default=1, help="1 keeps timings stable on a shared machine")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--long_seq_len", type=int, default=None,
                        help="also time the all-layers adapter on sequences (and a prompt) of this length, where the "
                        "memory's fixed per-token cost weighs less against self-attention (default 1024, --quick 256; "
                        "0 = skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    size = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4) if args.quick else dict(
        hidden_size=512, intermediate_size=1408, num_hidden_layers=8
    )
    config = LlamaConfig(vocab_size=8192, num_attention_heads=8, num_key_value_heads=4, **size)
    base = LlamaForCausalLM(config).eval()
    batch, seq_len, new_tokens, repeats = (2, 128, 16, 3) if args.quick else (4, 256, 64, 5)
    repeats = args.repeats or repeats
    if args.long_seq_len is None:
        args.long_seq_len = 256 if args.quick else 1024
    input_ids = torch.randint(0, config.vocab_size, (batch, seq_len))
    prompt = torch.randint(0, config.vocab_size, (1, 32))

    memory = dict(num_memory_tokens=1024, use_chapters=True, num_chapters=16, top_k_chapters=4, routing_chunk_size=64)
    settings = {
        "all_layers": MemoryAdapterConfig(**memory),
        "every_other_layer": MemoryAdapterConfig(target_layers=list(range(1, config.num_hidden_layers, 2)), **memory),
        # memory attention in a 128-wide space (2 heads of 64): query/output projections and attention shrink 4x
        "all_layers_reduced_dim_128": MemoryAdapterConfig(
            memory_bank_type="reduced_dim", memory_rank=128, memory_num_attention_heads=2, **memory
        ),
    }
    results = {
        "model": {"base": "LlamaForCausalLM", **size, "vocab_size": config.vocab_size, "heads": 8, "kv_heads": 4},
        "memory": memory,
        "forward_shape": [batch, seq_len],
        "decode": {"prompt_tokens": prompt.shape[1], "new_tokens": new_tokens, "batch": 1, "greedy": True},
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "targets": {"forward_ratio_max": 1.25, "decode_ratio_min": 0.8},
        "settings": {},
    }
    for name, adapter_config in settings.items():
        adapted = trained_adapter(base, adapter_config)
        measured = bench_pair(base, adapted, input_ids, prompt, new_tokens, repeats)
        adapted.unload()
        results["settings"][name] = {"target_layers": adapter_config.target_layers or "all",
                                     "memory_bank_type": adapter_config.memory_bank_type, **measured}
        print_pair(name, measured, repeats)
    if args.long_seq_len:
        long_batch = max(1, batch * seq_len // args.long_seq_len)  # the same tokens per forward
        long_input_ids = torch.randint(0, config.vocab_size, (long_batch, args.long_seq_len))
        long_prompt = torch.randint(0, config.vocab_size, (1, args.long_seq_len))
        adapted = trained_adapter(base, settings["all_layers"])
        measured = bench_pair(base, adapted, long_input_ids, long_prompt, new_tokens, repeats)
        adapted.unload()
        results["long_context"] = {"forward_shape": list(long_input_ids.shape), "prompt_tokens": args.long_seq_len,
                                   "target_layers": "all", **measured}
        print_pair(f"all_layers, {args.long_seq_len} tokens", measured, repeats)
    quantization = {}
    adapted = trained_adapter(base, MemoryAdapterConfig(**memory))
    with torch.no_grad():
        full = adapted(input_ids[:1]).logits
        with adapted.disable_adapter():
            memory_effect = (full - base(input_ids[:1]).logits).abs().max().item()
        trained_state = {key: value.clone() for key, value in adapted.adapter_state_dict().items()}
        adapted.unload()
        for bits in (8, 4):
            adapted = get_memory_model(base, MemoryAdapterConfig(**memory))
            adapted.load_adapter_state_dict(trained_state)
            adapted.quantize_memory(bits)
            error = (adapted(input_ids[:1]).logits - full).abs().max().item()
            adapted.unload()
            quantization[f"int{bits}"] = {"max_abs_logit_error": error, "max_abs_memory_effect": memory_effect}
            print(f"int{bits} bank: max |logit error| {error:.2e} (memory changes logits by up to {memory_effect:.2e})")
    results["quantization"] = quantization
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
