"""MemoryTransformer benchmark: training and KV-cache decoding speed vs LlamaForCausalLM, and a quality check.

1. Training tokens/s (forward + backward + AdamW step) of a MemoryTransformer with memory in every layer (1,024 memory
   tokens, 16 chapters, top-4) vs LlamaForCausalLM of the same dimensions. Target >= 0.75x.
2. Greedy decoding tokens/s with KV cache (`generate`), same pair of models. Target >= 0.8x.
3. Training again after `keep_freed_heap()` (CPU, glibc): the same pair with freed memory kept for reuse, as jemalloc
   or tcmalloc would; by default glibc returns it to the OS every step and each step page-faults it back in.
4. Quality: a memory model vs the vanilla control (`vanilla_mode=True`, identical backbone) trained on the same
   TinyStories blocks in the same order for the same number of steps; validation loss side by side (and wall-clock).

Speeds are measured in one run, alternating the two models (one thread; each training measurement in fresh processes,
one per model and round), reporting ratios of the medians and of the fastest repeats; a long-context pair
(sequence/prompt `--long_seq_len`) shows how the memory cost amortises. Results are printed and saved to
bench/results/memory_transformer.json. Default settings take about 8 minutes on a 2-core CPU (`--skip_quality`: about
6).

    python bench/bench_memory_transformer.py [--quick] [--device cuda]
"""

import argparse
import ctypes
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from flop_count import count_flops  # noqa: E402
from hf_memory.models.memory_transformer import MemoryTransformerConfig, MemoryTransformerForCausalLM  # noqa: E402
from hf_memory.tokenization import train_causal_lm_tokenizer  # noqa: E402

DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data"))


def backbone_fields(args) -> dict:
    return dict(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def memory_fields(args) -> dict:
    return dict(
        num_memory_tokens=args.num_memory_tokens,
        use_chapters=True,
        num_chapters=args.num_chapters,
        top_k_chapters=args.top_k,
        routing_chunk_size=args.routing_chunk_size,
        memory_layer_placement="all",
    )


def build_model(name: str, args):
    torch.manual_seed(0)
    if name == "llama":
        model = LlamaForCausalLM(LlamaConfig(**backbone_fields(args), attn_implementation="sdpa"))
    else:
        model = MemoryTransformerForCausalLM(
            MemoryTransformerConfig(**backbone_fields(args), **memory_fields(args), attn_implementation="sdpa")
        )
    return model.to(args.device)


def build_pair(args):
    return {name: build_model(name, args) for name in ("llama", "memory")}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def training_step_seconds(model, optimizer, input_ids, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - start


def keep_freed_heap() -> bool:
    """Make glibc keep freed memory for reuse: no mmap for large blocks, no heap trimming (what jemalloc or tcmalloc,
    or MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 at process start, give). By default glibc returns the
    freed top of the heap to the OS after every step, so the next step page-faults its activations in again; the
    memory layers' large attention buffers give the memory model several times Llama's page faults per step. Returns
    False where glibc's mallopt is not available."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def speed_summary(times: dict[str, list[float]], tokens: int) -> dict:
    """Tokens/s from the median and from the fastest repeat of each model, and memory/llama ratios of both. Repeats
    alternate between the models, so load from other jobs hits both; the min-based ratio is the least noisy."""
    seconds = {name: [round(t, 4) for t in values] for name, values in times.items()}
    result = {"repeats": len(times["llama"]), "seconds": seconds}
    for name, values in times.items():
        result[f"{name}_tokens_per_s"] = tokens / statistics.median(values)
        result[f"{name}_tokens_per_s_best"] = tokens / min(values)
    result["ratio"] = result["memory_tokens_per_s"] / result["llama_tokens_per_s"]
    result["ratio_best"] = result["memory_tokens_per_s_best"] / result["llama_tokens_per_s_best"]
    return result


def training_seconds(name: str, args, batch_size: int, seq_len: int, heap_kept: bool) -> list[float]:
    """Seconds of `args.train_steps` training steps (after `args.warmup_steps`) of one freshly built model; run in a
    process of its own, as a user trains, so neither model runs in a heap the other one grew."""
    torch.set_num_threads(args.threads)
    if heap_kept:
        keep_freed_heap()
    model = build_model(name, args).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.manual_seed(1)
    input_ids = torch.randint(0, args.vocab_size, (batch_size, seq_len), device=args.device)
    seconds = [training_step_seconds(model, optimizer, input_ids, args.device)
               for _ in range(args.warmup_steps + args.train_steps)]
    return seconds[args.warmup_steps:]


def bench_training(models, args, batch_size: int, seq_len: int, heap_kept: bool = False) -> dict:
    """Training tokens/s of each model in fresh processes, `args.train_rounds` rounds alternating the models so that
    machine load hits both. In one shared process, the model timed second reuses the freed heap the other one grew:
    with glibc's defaults Llama then page-faults nothing, while alone it faults as much as the memory model."""
    input_ids = torch.randint(0, args.vocab_size, (batch_size, seq_len), device=args.device)
    times = {name: [] for name in models}
    context = multiprocessing.get_context("spawn")
    for _ in range(args.train_rounds):
        for name in models:
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                times[name] += pool.submit(training_seconds, name, args, batch_size, seq_len, heap_kept).result()

    def forward_backward(model):
        model.train()
        model(input_ids, labels=input_ids).loss.backward()
        model.zero_grad(set_to_none=True)

    flops = {name: count_flops(lambda: forward_backward(model)) for name, model in models.items()}
    return {"batch_size": batch_size, "seq_len": seq_len, **speed_summary(times, batch_size * seq_len),
            "flop_ratio": flops["memory"] / flops["llama"]}


@torch.no_grad()
def bench_decoding(models, args, prompt_len: int) -> dict:
    prompt = torch.randint(0, args.vocab_size, (args.decode_batch_size, prompt_len), device=args.device)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    for model in models.values():
        model.eval()
        model.generate(prompt, **dict(kwargs, max_new_tokens=4, min_new_tokens=4))
    times = {name: [] for name in models}
    for _ in range(args.decode_repeats):
        for name, model in models.items():
            synchronize(args.device)
            start = time.perf_counter()
            model.generate(prompt, **kwargs)
            synchronize(args.device)
            times[name].append(time.perf_counter() - start)
    flops = {name: count_flops(lambda: model.generate(prompt, **kwargs)) for name, model in models.items()}
    return {"prompt_len": prompt_len, "new_tokens": args.new_tokens,
            **speed_summary(times, args.decode_batch_size * args.new_tokens),
            "flop_ratio": flops["memory"] / flops["llama"]}


def load_blocks(tokenizer, path: Path, block_size: int) -> torch.Tensor:
    ids = tokenizer(path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n\n"))["input_ids"]
    flat = torch.tensor([token for doc in ids for token in doc])
    usable = (len(flat) // block_size) * block_size
    return flat[:usable].view(-1, block_size)


def train_and_evaluate(model, train_blocks, valid_blocks, args) -> dict:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.quality_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    model.train()
    start = time.perf_counter()
    for step in range(args.quality_steps):
        rows = torch.arange(step * args.quality_batch, (step + 1) * args.quality_batch) % len(train_blocks)
        batch = train_blocks[rows].to(args.device)
        model(batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    train_seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        losses = [
            model(chunk.to(args.device), labels=chunk.to(args.device)).loss.item()
            for chunk in valid_blocks.split(args.quality_batch)
        ]
    return {"valid_loss": sum(losses) / len(losses), "train_seconds": train_seconds}


def bench_quality(args) -> dict:
    text = DATA_DIR / "text" / "tinystories-valid-head.txt"
    if not text.is_file():
        return {"skipped": f"{text} not found (set HF_MEMORY_DATA)"}
    stories = text.read_text(encoding="utf-8").split("\n\n")
    split = int(len(stories) * 0.9)
    train_path, valid_path = Path(args.tmp_dir) / "bench_train.txt", Path(args.tmp_dir) / "bench_valid.txt"
    train_path.write_text("\n\n".join(stories[:split]), encoding="utf-8")
    valid_path.write_text("\n\n".join(stories[split:]), encoding="utf-8")
    tokenizer = train_causal_lm_tokenizer([train_path], vocab_size=args.quality_vocab_size)
    train_blocks = load_blocks(tokenizer, train_path, args.quality_block_size)
    valid_blocks = load_blocks(tokenizer, valid_path, args.quality_block_size)[: args.quality_valid_blocks]
    backbone = dict(
        vocab_size=len(tokenizer),
        hidden_size=args.quality_hidden_size,
        intermediate_size=int(args.quality_hidden_size * 8 / 3) // 8 * 8,
        num_hidden_layers=args.quality_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    memory = dict(
        num_memory_tokens=args.quality_memory_tokens,
        use_chapters=True,
        num_chapters=args.quality_chapters,
        top_k_chapters=args.quality_top_k,
        routing_chunk_size=args.quality_chunk_size,
    )
    results = {"train_tokens": args.quality_steps * args.quality_batch * args.quality_block_size,
               "valid_tokens": valid_blocks.numel(), "train_blocks_available": len(train_blocks)}
    for name, extra in (("vanilla", dict(vanilla_mode=True)), ("memory", memory)):
        torch.manual_seed(0)
        model = MemoryTransformerForCausalLM(MemoryTransformerConfig(**backbone, **extra)).to(args.device)
        results[name] = train_and_evaluate(model, train_blocks, valid_blocks, args)
        results[name]["parameters"] = sum(p.numel() for p in model.parameters())
    results["valid_loss_delta_memory_minus_vanilla"] = results["memory"]["valid_loss"] - results["vanilla"]["valid_loss"]
    return results


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="1 keeps timings stable on a shared machine")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--intermediate_size", type=int, default=1376)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=8)
    parser.add_argument("--num_kv_heads", type=int, default=4)
    parser.add_argument("--num_memory_tokens", type=int, default=1024)
    parser.add_argument("--num_chapters", type=int, default=16)
    parser.add_argument("--top_k", type=int, default=4)
    parser.add_argument("--routing_chunk_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--warmup_steps", type=int, default=2, help="untimed training steps in each process")
    parser.add_argument("--train_steps", type=int, default=4, help="timed training steps in each process")
    parser.add_argument("--train_rounds", type=int, default=3, help="fresh processes per model and training setting")
    parser.add_argument("--decode_batch_size", type=int, default=1)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--decode_repeats", type=int, default=5)
    parser.add_argument("--long_seq_len", type=int, default=1024,
                        help="also time training (same tokens per step) and decoding after a prompt of this length; "
                        "0 = skip")
    parser.add_argument("--quality_steps", type=int, default=120)
    parser.add_argument("--quality_batch", type=int, default=16)
    parser.add_argument("--quality_block_size", type=int, default=128)
    parser.add_argument("--quality_valid_blocks", type=int, default=64)
    parser.add_argument("--quality_vocab_size", type=int, default=2048)
    parser.add_argument("--quality_hidden_size", type=int, default=128)
    parser.add_argument("--quality_layers", type=int, default=2)
    parser.add_argument("--quality_memory_tokens", type=int, default=1024)
    parser.add_argument("--quality_chapters", type=int, default=16)
    parser.add_argument("--quality_top_k", type=int, default=4)
    parser.add_argument("--quality_chunk_size", type=int, default=32)
    parser.add_argument("--quality_lr", type=float, default=3e-3)
    parser.add_argument("--skip_quality", action="store_true")
    parser.add_argument("--tmp_dir", default="/tmp")
    parser.add_argument("--output", default=str(REPO_ROOT / "bench" / "results" / "memory_transformer.json"))
    args = parser.parse_args()
    if args.quick:
        args.hidden_size, args.intermediate_size, args.num_layers, args.seq_len, args.batch_size = 128, 344, 2, 128, 4
        args.train_steps, args.new_tokens, args.decode_repeats, args.quality_steps = 3, 16, 2, 20
        args.train_rounds = 1
        args.long_seq_len = 256
    return args


def print_speed(name: str, result: dict, target: float) -> None:
    print(f"{name:>24} tokens/s  llama {result['llama_tokens_per_s']:.1f}  memory {result['memory_tokens_per_s']:.1f}  "
          f"ratio {result['ratio']:.3f} (median), {result['ratio_best']:.3f} (best of {result['repeats']}); "
          f"target >= {target}; at the FLOP ratio {1 / result['flop_ratio']:.3f}")


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    models = build_pair(args)
    report = {
        "settings": vars(args),
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                        "device": args.device},
    }
    report["training"] = bench_training(models, args, args.batch_size, args.seq_len)
    print_speed("training", report["training"], 0.75)
    report["decoding"] = bench_decoding(models, args, args.prompt_len)
    print_speed("decoding", report["decoding"], 0.8)
    report["targets_met"] = {"training": report["training"]["ratio"] >= 0.75, "decoding": report["decoding"]["ratio"] >= 0.8}
    if args.long_seq_len:
        long_batch = max(1, args.batch_size * args.seq_len // args.long_seq_len)
        report["long_context"] = {
            "training": bench_training(models, args, long_batch, args.long_seq_len),
            "decoding": bench_decoding(models, args, args.long_seq_len),
        }
        print_speed(f"training (seq {args.long_seq_len})", report["long_context"]["training"], 0.75)
        print_speed(f"decoding (prompt {args.long_seq_len})", report["long_context"]["decoding"], 0.8)
    if args.device == "cpu" and keep_freed_heap():
        report["training_heap_kept"] = bench_training(models, args, args.batch_size, args.seq_len, heap_kept=True)
        report["targets_met"]["training_heap_kept"] = report["training_heap_kept"]["ratio"] >= 0.75
        print_speed("training (heap kept)", report["training_heap_kept"], 0.75)
    if not args.skip_quality:
        report["quality"] = bench_quality(args)
        quality = report["quality"]
        if "skipped" in quality:
            print("quality:", quality["skipped"])
        else:
            print(f"quality (TinyStories, {quality['train_tokens']} train tokens): valid loss vanilla "
                  f"{quality['vanilla']['valid_loss']:.4f} ({quality['vanilla']['train_seconds']:.0f}s)  memory "
                  f"{quality['memory']['valid_loss']:.4f} ({quality['memory']['train_seconds']:.0f}s)  delta "
                  f"{quality['valid_loss_delta_memory_minus_vanilla']:+.4f}; perplexity "
                  f"{math.exp(quality['vanilla']['valid_loss']):.2f} vs {math.exp(quality['memory']['valid_loss']):.2f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2, default=str))
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
