"""GMMXLNet (k experts) training step vs MemXLNet (gated token memory) on the same XLNet base.

One step = forward of `--segments` consecutive segments carrying memory (full BPTT), backward, AdamW step.
Both models share the XLNet weights and the inputs; the runs are interleaved (A, B, A, B, ...) and the median
step time of each is compared, so machine load affects both alike. Target: GMM(k=4) / MemXLNet <= 1.05.

    python bench/bench_gmm.py                      # small base (d=256, 4 layers), CPU-friendly
    python bench/bench_gmm.py --preset base        # xlnet-base-cased shape (d=768, 12 layers, 384 tokens)
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_memory.models.memxlnet.configuration_memxlnet import GMMXLNetConfig, MemXLNetConfig  # noqa: E402
from hf_memory.models.memxlnet.modeling_gmmxlnet import GMMXLNetForQuestionAnswering  # noqa: E402
from hf_memory.models.memxlnet.modeling_memxlnet import MemXLNetForQuestionAnswering  # noqa: E402

PRESETS = {
    "tiny": dict(d_model=64, n_layer=2, n_head=4, d_inner=256, seq_len=128, batch_size=4),
    "small": dict(d_model=256, n_layer=4, n_head=4, d_inner=1024, seq_len=256, batch_size=4),
    "base": dict(d_model=768, n_layer=12, n_head=12, d_inner=3072, seq_len=384, batch_size=4),
}


def build_models(preset, memory_tokens, variants, vocab_size=8000):
    shape = {key: preset[key] for key in ("d_model", "n_layer", "n_head", "d_inner")}
    common = dict(vocab_size=vocab_size, dropout=0.0, memory_num_tokens=memory_tokens, **shape)
    torch.manual_seed(0)
    models = {"memxlnet": MemXLNetForQuestionAnswering(MemXLNetConfig(**common))}
    for name, options in variants.items():
        models[name] = GMMXLNetForQuestionAnswering(GMMXLNetConfig(**common, **options))
        # Same XLNet base and QA head: only the memory differs.
        models[name].load_state_dict(
            {k: v for k, v in models["memxlnet"].state_dict().items() if not k.startswith("memory.")}, strict=False
        )
    return models


def make_segments(config, preset, num_segments):
    generator = torch.Generator().manual_seed(1)
    batch_size, length, m = preset["batch_size"], preset["seq_len"], config.memory_num_tokens
    segments = []
    for _ in range(num_segments):
        ids = torch.randint(10, 7000, (batch_size, length), generator=generator)
        ids[:, :m] = torch.tensor(config.mem_read_token_ids)
        ids[:, -m - 1 : -1] = torch.tensor(config.mem_write_token_ids)
        ids[:, -1] = 3
        labels = torch.randint(m, length - m - 1, (2, batch_size), generator=generator)
        segments.append(dict(input_ids=ids, start_positions=labels[0], end_positions=labels[1]))
    return segments


def training_step(model, optimizer, segments):
    memory, loss = None, 0.0
    for segment in segments:
        outputs = model(**segment, memory_state=memory)
        memory, loss = outputs.memory_state, loss + outputs.loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--memory_num_tokens", type=int, default=16)
    parser.add_argument("--num_memory_experts", type=int, default=4)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "gmm.json"))
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    k = args.num_memory_experts
    variants = {
        f"gmm_k{k}_write_mean": dict(num_memory_experts=k),
        f"gmm_k{k}_read_attention": dict(num_memory_experts=k, routing_mode="read-based", pooling_method="attention"),
    }
    models = build_models(preset, args.memory_num_tokens, variants)
    segments = make_segments(models["memxlnet"].config, preset, args.segments)
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in models.items()}
    for model in models.values():
        model.train()

    times = {name: [] for name in models}
    for repeat in range(args.warmup + args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            training_step(model, optimizers[name], segments)
            elapsed = time.perf_counter() - start
            if repeat >= args.warmup:
                times[name].append(elapsed)

    baseline = statistics.median(times["memxlnet"])
    parameters = {name: sum(p.numel() for p in model.memory.parameters()) for name, model in models.items()}
    results = {
        "benchmark": "GMMXLNet vs MemXLNet training step (forward over segments + backward + AdamW)",
        "preset": args.preset,
        "shape": preset,
        "memory_num_tokens": args.memory_num_tokens,
        "segments_per_step": args.segments,
        "repeats": args.repeats,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "target_ratio": 1.05,
        "models": {
            name: {
                "median_step_s": statistics.median(samples),
                "min_step_s": min(samples),
                "ratio_vs_memxlnet": statistics.median(samples) / baseline,
                "min_ratio_vs_memxlnet": min(samples) / min(times["memxlnet"]),
                "memory_parameters": parameters[name],
            }
            for name, samples in times.items()
        },
    }
    for name, entry in results["models"].items():
        print(f"{name:28s} median {entry['median_step_s'] * 1000:8.1f} ms  ratio {entry['ratio_vs_memxlnet']:.3f}  "
              f"(min-based {entry['min_ratio_vs_memxlnet']:.3f})  memory params {entry['memory_parameters']}")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
