"""QA training-step overhead of MemXLNet (gated token memory, m=8 and m=16) vs plain XLNet on the same segments.

One step = forward of `--segments` consecutive segments (memory carried with full BPTT for MemXLNet, independent
segments for XLNet), the summed span loss, backward, AdamW step: what `MemoryTrainer` does with `bptt_depth=0`.
Every model gets the same batch of segments of the same length and the same XLNet dimensions; the baseline is the
same code path with `memory_num_tokens=0` (`run_qa.py --model_type xlnet`), and sees ordinary tokens where the
memory models have their READ/WRITE tokens. Runs are interleaved (the order rotates every repeat), one thread.
Target: step time MemXLNet / XLNet <= 1.10 (min-based ratio; medians reported too).

Memory: `saved_activations_mib` is what autograd keeps for the backward of one step (all segments' activations,
weights excluded; exact and deterministic). `peak_step_rss_growth_mib` is how far the first training step (activations,
gradients, AdamW state) raises the peak resident set (VmHWM) of a fresh process per model (allocator-dependent).

    python bench/bench_qa_step.py                  # small base (d=256, 4 layers, 256 tokens, 4 segments)
    python bench/bench_qa_step.py --quick          # tiny model, smoke run (~30 s)
    python bench/bench_qa_step.py --preset base    # xlnet-base-cased shape
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]

from bench_gmm import PRESETS, make_segments, training_step  # noqa: E402
from bench_pipeline import process_memory_kib  # noqa: E402

from hf_memory.models.memxlnet.configuration_memxlnet import MemXLNetConfig  # noqa: E402
from hf_memory.models.memxlnet.modeling_memxlnet import MemXLNetForQuestionAnswering  # noqa: E402

VOCAB_SIZE = 8000
BASELINE = "xlnet"
TARGET_RATIO = 1.10
PLAIN_TOKEN_ID = 10  # what the baseline reads where memory models have memory tokens


def model_names(memory_sizes: list[int]) -> list[str]:
    return [BASELINE] + [f"memxlnet_m{m}" for m in memory_sizes]


def build_model(name: str, preset: dict) -> MemXLNetForQuestionAnswering:
    m = 0 if name == BASELINE else int(name.rsplit("_m", 1)[1])
    shape = {key: preset[key] for key in ("d_model", "n_layer", "n_head", "d_inner")}
    config = MemXLNetConfig(vocab_size=VOCAB_SIZE, dropout=0.0, memory_num_tokens=m, memory_update="gated", **shape)
    torch.manual_seed(0)
    return MemXLNetForQuestionAnswering(config).train()


def build_segments(model: MemXLNetForQuestionAnswering, preset: dict, num_segments: int, largest_memory: int):
    """The same random segments for every model: the largest memory's layout, memory ids made plain where unused."""
    layout = MemXLNetConfig(vocab_size=VOCAB_SIZE, memory_num_tokens=largest_memory)
    segments = make_segments(layout, preset, num_segments)
    config = model.config
    remap = torch.arange(layout.vocab_size)
    remap[VOCAB_SIZE:] = PLAIN_TOKEN_ID
    if config.memory_num_tokens:
        # This model's memory ids keep their place: slot i of the layout is slot i of the model.
        read, write = layout.mem_read_token_ids, layout.mem_write_token_ids
        m = config.memory_num_tokens
        remap[read[:m]] = torch.tensor(config.mem_read_token_ids)
        remap[write[:m]] = torch.tensor(config.mem_write_token_ids)
    return [{**segment, "input_ids": remap[segment["input_ids"]]} for segment in segments]


def saved_activation_mib(model: MemXLNetForQuestionAnswering, segments: list[dict]) -> float:
    """MiB of the tensors autograd keeps for the backward of one step (activations of all segments, not weights)."""
    weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        memory = None
        for segment in segments:
            outputs = model(**segment, memory_state=memory)
            memory = outputs.memory_state
    return sum(saved.values()) / 2**20


def measure_peak_memory(name: str, preset_name: str, num_segments: int, largest_memory: int) -> None:
    """Child process: how far the first training step (activations, gradients, AdamW state) raises the peak RSS."""
    torch.set_num_threads(1)
    preset = PRESETS[preset_name]
    model = build_model(name, preset)
    segments = build_segments(model, preset, num_segments, largest_memory)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak (VmHWM) to the current resident set
    before = process_memory_kib("VmRSS")
    training_step(model, optimizer, segments)
    print(json.dumps({"peak_step_rss_growth_mib": (process_memory_kib("VmHWM") - before) / 1024}))


def peak_memory_in_fresh_process(name: str, args) -> dict:
    command = [sys.executable, __file__, "--preset", args.preset, "--segments", str(args.segments),
               "--memory_num_tokens", *map(str, args.memory_num_tokens), "--measure_peak_memory", name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--memory_num_tokens", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--segments", type=int, default=4, help="segments per document, all in one BPTT window")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 2 segments, 3 repeats (smoke run)")
    parser.add_argument("--output", default=str(BENCH_DIR / "results" / "qa_step.json"))
    parser.add_argument("--measure_peak_memory", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.segments, args.repeats = "tiny", 2, 3
    largest_memory = max(args.memory_num_tokens)
    if args.measure_peak_memory:
        return measure_peak_memory(args.measure_peak_memory, args.preset, args.segments, largest_memory)

    torch.set_num_threads(1)  # the machine is shared; one thread keeps the interleaved runs comparable
    preset = PRESETS[args.preset]
    names = model_names(args.memory_num_tokens)
    models = {name: build_model(name, preset) for name in names}
    segments = {name: build_segments(model, preset, args.segments, largest_memory) for name, model in models.items()}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in models.items()}

    times = {name: [] for name in names}
    for repeat in range(args.warmup + args.repeats):
        rotation = repeat % len(names)
        for name in names[rotation:] + names[:rotation]:
            start = time.perf_counter()
            training_step(models[name], optimizers[name], segments[name])
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
        print(f"repeat {repeat + 1}/{args.warmup + args.repeats}: "
              + ", ".join(f"{name} {times[name][-1] * 1e3:.0f} ms" for name in names if times[name]), flush=True)

    peak = {name: peak_memory_in_fresh_process(name, args) for name in names}
    for name in names:
        peak[name]["saved_activations_mib"] = saved_activation_mib(models[name], segments[name])
    base_times, base_peak = times[BASELINE], peak[BASELINE]["peak_step_rss_growth_mib"]
    base_saved = peak[BASELINE]["saved_activations_mib"]
    entries = {}
    for name in names:
        samples = times[name]
        entries[name] = {
            "memory_num_tokens": models[name].config.memory_num_tokens,
            "median_step_s": statistics.median(samples),
            "min_step_s": min(samples),
            "step_s": samples,
            "ratio_vs_xlnet": min(samples) / min(base_times),
            "median_ratio_vs_xlnet": statistics.median(samples) / statistics.median(base_times),
            "paired_median_ratio_vs_xlnet": statistics.median(s / b for s, b in zip(samples, base_times)),
            "memory_parameters": sum(p.numel() for p in models[name].memory.parameters()) if models[name].memory else 0,
            **peak[name],
            "saved_activations_ratio_vs_xlnet": peak[name]["saved_activations_mib"] / base_saved,
            "peak_memory_ratio_vs_xlnet": peak[name]["peak_step_rss_growth_mib"] / base_peak if base_peak > 0 else None,
        }
        if name != BASELINE:
            entries[name]["meets_target"] = entries[name]["ratio_vs_xlnet"] <= TARGET_RATIO

    results = {
        "benchmark": "QA training step (segments forward + backward + AdamW), MemXLNet gated token memory vs XLNet",
        "preset": args.preset,
        "shape": preset,
        "segments_per_step": args.segments,
        "bptt": "full (one window over all segments)",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "quick": args.quick,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "target_ratio": TARGET_RATIO,
        "ratio_definition": "min step time / min XLNet step time (medians and paired medians reported too)",
        "models": entries,
    }
    for name, entry in entries.items():
        print(f"{name:16s} median {entry['median_step_s'] * 1e3:8.1f} ms  min {entry['min_step_s'] * 1e3:8.1f} ms  "
              f"ratio {entry['ratio_vs_xlnet']:.3f} (median-based {entry['median_ratio_vs_xlnet']:.3f})  "
              f"saved activations {entry['saved_activations_mib']:.1f} MiB, first-step peak RSS growth "
              f"{entry['peak_step_rss_growth_mib']:.1f} MiB")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
