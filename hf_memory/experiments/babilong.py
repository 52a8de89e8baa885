"""Long-context memory experiment on BABILong-style qa1/qa2: warm start without memory, then add memory.

A tiny XLNet trained from scratch learns bAbI fact binding only with a curriculum: first WITHOUT memory on short
documents (`warm_start_segments`, by default 1 segment), then, from that same checkpoint, on longer documents with
and without memory. Every stage is a `run_qa.py` run (the user-facing recipe); exact match is measured per document
length by more `run_qa.py --do_eval` runs.

What makes the warm start learn (measured): bAbI-1k has 4 people and 6 places in 200 training stories, which a
2-layer reader memorises (train loss falls, held-out EM stays near 50%). Renaming people and places per copy of
each training story (`augment_entities`), no dropout and a constant learning rate make it learn the binding rule
instead: after a plateau of about 3,500 steps at 1 segment, held-out EM jumps to 99%. Test stories keep bAbI's
names. Because the jump came anywhere between 3,300 and more than 5,000 steps, the warm start is then checked on
development questions (held out from training and from the reported numbers) and extended until it reaches
`warm_start_target_em`. The memory stage then decays its learning rate to zero (at a constant rate its EM swung by
10 points between evaluations), and trains with the global softmax over all segments of a document, so that a
segment's answer score is compared with the other segments' during training as it is at inference.

The benchmark (`bench/bench_babilong.py`) and the demo (`examples/long_context_demo.py`) both call `run_experiment`.
"""

import contextlib
import importlib.util
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..data.babilong import build_babilong
from ..tokenization import train_xlnet_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
BABI_FILES = {"qa1": "qa1_single-supporting-fact", "qa2": "qa2_two-supporting-facts"}
FILLER_FILE = Path("text") / "wikitext-2-raw-test.txt"

# run_qa.py flags of each compared model, all started from the same no-memory warm start.
VARIANTS = {
    "no_memory": ["--model_type", "xlnet"],
    "memxlnet_token_gated": ["--model_type", "memxlnet", "--memory_impl", "token", "--memory_update", "gated"],
    "memxlnet_differentiable": ["--model_type", "memxlnet", "--memory_impl", "differentiable"],
    "gmmxlnet_k4": ["--model_type", "gmmxlnet", "--num_memory_experts", "4"],
    "memxlnet_token_gated_replace": [
        "--model_type", "memxlnet", "--memory_impl", "token", "--memory_update", "gated_replace",
    ],
    "memxlnet_token_gated_replace_backward": [
        "--model_type", "memxlnet", "--memory_impl", "token", "--memory_update", "gated_replace",
        "--reading_order", "backward",
    ],
    "memxlnet_token_gated_replace_bidirectional": [
        "--model_type", "memxlnet", "--memory_impl", "token", "--memory_update", "gated_replace",
        "--reading_order", "bidirectional",
    ],
}
# The benchmark's models; the gated-replace token memory and its backward and bidirectional readings (longer-document
# generalisation) are opt-in, which keeps the default run under an hour on 2 CPU cores.
DEFAULT_VARIANTS = ["no_memory", "memxlnet_token_gated", "memxlnet_differentiable", "gmmxlnet_k4"]


@dataclass
class BabilongExperimentConfig:
    """Sizes, steps and lengths of one experiment (defaults: the benchmark on a 2-core CPU)."""

    output_dir: str
    data_dir: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["qa1"])
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    eval_lengths: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    warm_start_segments: list[int] = field(default_factory=lambda: [1])
    warm_start_steps: list[int] = field(default_factory=lambda: [6000])
    warm_start_target_em: float = 95.0
    warm_start_extension_steps: int = 1000
    warm_start_max_extensions: int = 4
    dev_examples: int = 100
    train_segments: int = 4
    memory_steps: int = 700
    train_copies: int = 10
    augment_entities: bool = True
    train_examples: int | None = None
    eval_examples: int = 200
    max_seq_length: int = 128
    memory_num_tokens: int = 4
    model_config: str = "d_model=64,n_layer=2,n_head=4,d_inner=256,dropout=0.0"
    vocab_size: int = 2000
    batch_size: int = 16
    eval_batch_size: int = 32
    learning_rate: float = 1e-3
    memory_learning_rate: float = 1e-3
    lr_scheduler_type: str = "constant_with_warmup"
    memory_lr_scheduler_type: str = "linear"
    bptt_depth: int = 0
    use_global_softmax: bool = True
    seed: int = 0
    device: str = "cpu"
    cpu_threads: int = 1
    parallel_variants: int = 2

    def __post_init__(self):
        for task in self.tasks:
            if task not in BABI_FILES:
                raise ValueError(f"Unknown task {task!r}. Fix: use tasks from {sorted(BABI_FILES)}.")
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ValueError(f"Unknown variant {variant!r}. Fix: use variants from {list(VARIANTS)}.")
        if len(self.warm_start_steps) != len(self.warm_start_segments):
            raise ValueError(
                f"warm_start_steps {self.warm_start_steps} needs one step count per warm-start stage "
                f"{self.warm_start_segments}. Fix: give as many step counts as segment counts."
            )
        if not 0 < self.warm_start_target_em <= 100:
            raise ValueError(f"warm_start_target_em is an exact match in (0, 100], got {self.warm_start_target_em}.")
        for name in ("warm_start_extension_steps", "dev_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.warm_start_max_extensions < 0:
            raise ValueError(
                f"warm_start_max_extensions must be >= 0 (0 = never extend), got {self.warm_start_max_extensions}."
            )
        if self.parallel_variants < 1:
            raise ValueError(f"parallel_variants must be >= 1 (1 = in this process), got {self.parallel_variants}.")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}.")


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The shared real data: `data_dir`, else $HF_MEMORY_DATA, else ../shared/data next to the repository."""
    candidate = Path(data_dir or os.environ.get("HF_MEMORY_DATA") or REPO_ROOT.parent / "shared" / "data")
    needed = [candidate / "babi" / f"{name}_{split}.txt" for name in BABI_FILES.values() for split in ("train", "test")]
    missing = [str(path) for path in [*needed, candidate / FILLER_FILE] if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"The bAbI/WikiText data was not found under {candidate} (missing: {', '.join(missing)}). Fix: set "
            "HF_MEMORY_DATA (or --data_dir) to a folder with babi/qa1_*.txt, babi/qa2_*.txt and "
            "text/wikitext-2-raw-test.txt."
        )
    return candidate


def load_run_qa():
    """The repository's run_qa.py as a module, imported in-process (no interpreter start per stage)."""
    path = REPO_ROOT / "run_qa.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the experiment drives the repository's run_qa.py.")
    spec = importlib.util.spec_from_file_location("hf_memory_run_qa", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def babi_path(data_dir: Path, task: str, split: str) -> Path:
    return data_dir / "babi" / f"{BABI_FILES[task]}_{split}.txt"


def prepare_tokenizer(config: BabilongExperimentConfig, data_dir: Path, output_dir: Path) -> Path:
    """XLNet-style tokenizer trained offline on the filler text and the bAbI training stories."""
    folder = output_dir / "tokenizer"
    if not (folder / "tokenizer_config.json").is_file():
        files = [data_dir / FILLER_FILE, *(babi_path(data_dir, task, "train") for task in BABI_FILES)]
        tokenizer = train_xlnet_tokenizer(files, vocab_size=config.vocab_size, model_max_length=config.max_seq_length)
        tokenizer.save_pretrained(folder)
    return folder


# Which bAbI file, which questions of it and which filler seed offset each split uses. The development questions
# (for deciding when the warm start has learnt) follow the evaluated ones in the test file, so they are held out
# from both training and the reported numbers.
SPLITS = {
    "train": ("train", lambda config: (0, config.train_examples), 0),
    "test": ("test", lambda config: (0, config.eval_examples), 1),
    "dev": ("test", lambda config: (config.eval_examples, config.dev_examples), 2),
}


def write_dataset(config, data_dir, tokenizer, tasks, split, num_segments, folder: Path, copies: int = 1) -> Path:
    """One SQuAD v2 file for `tasks` at `num_segments` segments; `copies` re-scatter the stories in new filler
    (training copies also rename their people and places when `config.augment_entities`)."""
    path = folder / f"{'+'.join(tasks)}-{split}-{num_segments}seg.json"
    if path.is_file():
        return path
    babi_split, questions, seed_offset = SPLITS[split]
    skip_examples, max_examples = questions(config)
    data = []
    for task in tasks:
        for copy in range(copies):
            payload = build_babilong(
                babi_path(data_dir, task, babi_split), data_dir / FILLER_FILE, tokenizer, num_segments,
                max_seq_length=config.max_seq_length, doc_stride=0, memory_num_tokens=config.memory_num_tokens,
                max_examples=max_examples, skip_examples=skip_examples,
                seed=config.seed + 1000 * copy + seed_offset, task_name=f"{task}-c{copy}",
                augment_entities=config.augment_entities and split == "train",
            )
            data.extend(payload["data"])
    path.write_text(json.dumps({"version": "v2.0", "data": data}), encoding="utf-8")
    return path


def common_flags(config: BabilongExperimentConfig) -> list[str]:
    return [
        "--max_seq_length", str(config.max_seq_length), "--doc_stride", "0",
        "--max_query_length", "24", "--per_device_train_batch_size", str(config.batch_size),
        "--per_device_eval_batch_size", str(config.eval_batch_size), "--report_to", "none", "--disable_tqdm", "True",
        "--save_strategy", "no", "--seed", str(config.seed), "--logging_steps", "100",
        "--dataloader_num_workers", "0", "--use_cpu", str(config.device == "cpu"),
    ]


def train_stage(run_qa, config, train_file, steps, output_dir, extra, learning_rate, lr_scheduler_type) -> dict:
    """One `run_qa.py --do_train` run; returns its wall time and final training loss."""
    if not (output_dir / "model.safetensors").is_file():
        argv = [
            *common_flags(config), "--train_file", str(train_file), "--do_train",
            "--max_steps", str(steps), "--learning_rate", str(learning_rate), "--warmup_steps", str(steps // 10),
            "--lr_scheduler_type", lr_scheduler_type,
            "--weight_decay", "0.01", "--bptt_depth", str(config.bptt_depth),
            "--use_global_softmax", str(config.use_global_softmax), "--output_dir", str(output_dir),
            "--overwrite_output_dir", "True", *extra,  # a stage without its model is redone from the start
        ]
        started = time.perf_counter()
        run_qa(argv)
        (output_dir / "stage_wall_time.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))
    metrics = json.loads((output_dir / "train_results.json").read_text())
    return {
        "steps": steps,
        "train_loss": metrics.get("train_loss"),
        "wall_seconds": json.loads((output_dir / "stage_wall_time.json").read_text())["seconds"],
        "checkpoint": str(output_dir),
    }


def evaluate_stage(run_qa, config, checkpoint: Path, eval_file: Path, output_dir: Path) -> dict:
    """`run_qa.py --do_eval` of a checkpoint on one file; returns eval_results.json."""
    results = output_dir / "eval_results.json"
    if not results.is_file():
        run_qa([
            *common_flags(config), "--model_name_or_path", str(checkpoint),
            "--validation_file", str(eval_file), "--do_eval", "--output_dir", str(output_dir),
        ])
    return json.loads(results.read_text())


def extend_warm_start(run_qa, config, checkpoint: Path, train_file: Path, dev_files: dict, results: dict, log) -> Path:
    """Continue the last warm-start stage in steps of `warm_start_extension_steps` until its exact match on the held-out
    development questions reaches `warm_start_target_em` (at most `warm_start_max_extensions` times). The jump from the
    plateau came anywhere between 3,300 and more than 5,000 steps in the runs measured, so a fixed step count either
    wastes time or hands the memory stage a model that has not learnt the task. Returns the checkpoint to use."""
    segments = config.warm_start_segments[-1]
    for extension in range(config.warm_start_max_extensions + 1):
        dev_exact = [
            evaluate_stage(run_qa, config, checkpoint, dev_files[task], checkpoint / f"dev_{task}_{segments}seg")
            ["eval_exact"] for task in config.tasks
        ]
        dev_em = sum(dev_exact) / len(dev_exact)
        results["warm_start"][-1]["dev_exact_match"] = dev_em
        log(f"  warm start: {dev_em:.1f} EM on {config.dev_examples} development questions per task at {segments} "
            f"segment(s) (target {config.warm_start_target_em:g})")
        if dev_em >= config.warm_start_target_em or extension == config.warm_start_max_extensions:
            break
        log(f"warm start extension {extension + 1}: {config.warm_start_extension_steps} more steps")
        stage = train_stage(
            run_qa, config, train_file, config.warm_start_extension_steps,
            Path(config.output_dir) / f"warm_start_{segments}seg_more{extension + 1}",
            [*VARIANTS["no_memory"], "--model_name_or_path", str(checkpoint)], config.learning_rate,
            config.lr_scheduler_type,
        )
        results["warm_start"].append({"segments": segments, "extension": extension + 1, **stage})
        checkpoint = Path(stage["checkpoint"])
    return checkpoint


def exact_match_by_length(run_qa, config, checkpoint: Path, test_files: dict, log) -> dict:
    """{task: {segments: EM}} of a checkpoint on the held-out files, one `run_qa.py --do_eval` per file."""
    exact = {}
    for task in config.tasks:
        exact[task] = {
            str(n): evaluate_stage(
                run_qa, config, checkpoint, test_files[(task, n)], checkpoint / f"eval_{task}_{n}seg"
            )["eval_exact"]
            for n in config.eval_lengths
        }
        log(f"  {task} EM by segments: " + ", ".join(f"{n}: {em:.1f}" for n, em in exact[task].items()))
    return exact


@contextlib.contextmanager
def intra_op_threads(config: BabilongExperimentConfig):
    """`config.cpu_threads` intra-op threads on CPU (on a shared CPU, more make tiny models many times slower:
    spin-waiting), and the caller's thread count back afterwards."""
    previous = torch.get_num_threads()
    if config.device == "cpu":
        torch.set_num_threads(config.cpu_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_variant(config, variant: str, warm_start: Path, train_file: Path, test_files: dict, log=print) -> dict:
    """One compared model: `config.memory_steps` of `run_qa.py` from the warm start, then EM by length (runs in a
    worker process when variants train in parallel)."""
    with intra_op_threads(config):
        return _train_variant(config, variant, warm_start, train_file, test_files, log)


def _train_variant(config, variant: str, warm_start: Path, train_file: Path, test_files: dict, log) -> dict:
    run_qa = load_run_qa().main
    flags = VARIANTS[variant]
    if variant != "no_memory":
        flags = [*flags, "--memory_num_tokens", str(config.memory_num_tokens)]
    log(f"{variant}: from the warm start, {config.train_segments}-segment documents, {config.memory_steps} steps")
    model_dir = Path(config.output_dir) / variant
    training = train_stage(
        run_qa, config, train_file, config.memory_steps, model_dir,
        [*flags, "--model_name_or_path", str(warm_start)], config.memory_learning_rate, config.memory_lr_scheduler_type,
    )
    exact = exact_match_by_length(run_qa, config, model_dir, test_files, log)
    return {"run_qa_flags": flags, "training": training, "exact_match": exact}


def run_experiment(config: BabilongExperimentConfig, log=print) -> dict:
    """Run every stage (skipping those whose outputs exist in `output_dir`) and return the results."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with intra_op_threads(config):
        return _run_stages(config, log)


def _run_stages(config: BabilongExperimentConfig, log) -> dict:
    started = time.perf_counter()
    data_dir = find_data_dir(config.data_dir)
    output_dir = Path(config.output_dir)
    data_folder = output_dir / "data"
    data_folder.mkdir(parents=True, exist_ok=True)
    run_qa = load_run_qa().main
    tokenizer_dir = prepare_tokenizer(config, data_dir, output_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tasks = config.tasks
    log(f"building data for {'+'.join(tasks)} in {data_folder}")
    train_files = {
        n: write_dataset(config, data_dir, tokenizer, tasks, "train", n, data_folder, config.train_copies)
        for n in sorted({*config.warm_start_segments, config.train_segments})
    }
    test_files = {
        (task, n): write_dataset(config, data_dir, tokenizer, [task], "test", n, data_folder)
        for task in tasks for n in config.eval_lengths
    }
    results = {"config": asdict(config), "data_dir": str(data_dir), "warm_start": [], "models": {}}
    checkpoint, no_memory_flags = None, VARIANTS["no_memory"]
    for stage, (segments, steps) in enumerate(zip(config.warm_start_segments, config.warm_start_steps)):
        log(f"warm start stage {stage}: no memory, {segments}-segment documents, {steps} steps")
        start_flags = (
            ["--config_overrides", config.model_config, "--tokenizer_name", str(tokenizer_dir)]
            if checkpoint is None else ["--model_name_or_path", str(checkpoint)]
        )
        stage_result = train_stage(
            run_qa, config, train_files[segments], steps, output_dir / f"warm_start_{segments}seg",
            [*no_memory_flags, *start_flags], config.learning_rate, config.lr_scheduler_type,
        )
        results["warm_start"].append({"segments": segments, **stage_result})
        checkpoint = Path(stage_result["checkpoint"])
        log(f"  done in {stage_result['wall_seconds']:.0f}s, train loss {stage_result['train_loss']:.3f}")
    dev_files = {
        task: write_dataset(config, data_dir, tokenizer, [task], "dev", config.warm_start_segments[-1], data_folder)
        for task in tasks
    }
    checkpoint = extend_warm_start(
        run_qa, config, checkpoint, train_files[config.warm_start_segments[-1]], dev_files, results, log
    )
    results["warm_start_exact_match"] = exact_match_by_length(run_qa, config, checkpoint, test_files, log)
    variant_jobs = [(config, variant, checkpoint, train_files[config.train_segments], test_files)
                    for variant in config.variants]
    if config.parallel_variants > 1:
        log(f"training {len(variant_jobs)} variants in {config.parallel_variants} processes")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(config.parallel_variants, mp_context=context) as pool:
            trained = list(pool.map(train_variant, *zip(*variant_jobs)))
    else:
        trained = [train_variant(*job, log=log) for job in variant_jobs]
    results["models"] = dict(zip(config.variants, trained))
    results["total_wall_seconds"] = time.perf_counter() - started
    # Stages reused from an earlier (interrupted or parallel) run count with the time they took then.
    results["training_wall_seconds"] = sum(
        stage["wall_seconds"]
        for stage in [*results["warm_start"], *(model["training"] for model in results["models"].values())]
    )
    results["platform"] = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    return results


def result_rows(results: dict) -> list[tuple[str, str, dict]]:
    """(model, task, {segments: EM}) for the warm start alone and every model trained from it."""
    rows = [("warm start only", results["warm_start_exact_match"])] if "warm_start_exact_match" in results else []
    rows += [(variant, model["exact_match"]) for variant, model in results["models"].items()]
    return [(name, task, by_length) for name, exact_match in rows for task, by_length in exact_match.items()]


def format_table(results: dict) -> str:
    """Markdown table: one row per model and task, one column per document length."""
    lengths = results["config"]["eval_lengths"]
    lines = [
        "| model | task | " + " | ".join(f"{n} seg" for n in lengths) + " |",
        "|---|---|" + "---|" * len(lengths),
    ]
    for name, task, by_length in result_rows(results):
        lines.append(f"| {name} | {task} | " + " | ".join(f"{by_length[str(n)]:.1f}" for n in lengths) + " |")
    return "\n".join(lines)


def plot_results(results: dict, path: str | os.PathLike) -> None:
    """Exact match vs. document length, one line per model (and task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = results["config"]["eval_lengths"]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for name, task, by_length in result_rows(results):
        style = ("-" if task == "qa1" else "--") + ("o" if name in results["models"] else ".")
        color = None if name in results["models"] else "grey"
        axis.plot(lengths, [by_length[str(n)] for n in lengths], style, color=color, label=f"{name} ({task})")
    axis.set_xscale("log", base=2)
    axis.set_xticks(lengths, [str(n) for n in lengths])
    axis.axvline(results["config"]["train_segments"], color="grey", linewidth=0.8, linestyle=":")
    axis.set_xlabel("document length (segments of %d tokens)" % results["config"]["max_seq_length"])
    axis.set_ylabel("exact match (%)")
    axis.set_ylim(0, 102)
    axis.set_title(f"BABILong-style qa: memory vs. no memory (trained on {results['config']['train_segments']} segments)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
