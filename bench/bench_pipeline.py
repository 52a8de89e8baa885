"""Throughput and memory of the question-answering pipeline on real long NQ documents (23k-140k characters).

Measures, in one run and on the same documents:
  * documents/s of a memory MemXLNet (segments in order, memory carried, documents batched time-step-major) and of
    chunk-independent inference with a model of the same size (`memory_num_tokens=0`, segments batched freely);
    target ratio >= 0.9;
  * peak resident-memory growth of one pipeline call on the shortest and on the longest of the 21 documents (each
    in a fresh process, median of `--memory_repeats` processes: the allocator makes single peaks vary by several
    MiB), to show that memory does not grow with the number of segments beyond the logits; plus the peak of the
    Python objects and numpy arrays the call allocates (tracemalloc: deterministic, torch's own buffers excluded).

    python bench/bench_pipeline.py [--num_documents 8] [--repeats 3]   # writes bench/results/pipeline.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering, add_memory_tokens, train_xlnet_tokenizer  # noqa: E402
from hf_memory.models.memxlnet.pipeline_question_answering import MemXLNetQuestionAnsweringPipeline  # noqa: E402

DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data"))
NQ_FILE = DATA_DIR / "squad_v2" / "nq-long-documents.json"
SEGMENTING = {"max_seq_len": 384, "doc_stride": 64, "max_question_len": 64}
MODEL_SIZE = {"d_model": 64, "n_layer": 2, "n_head": 4, "d_inner": 128}


def load_documents() -> list[dict]:
    """One question per long document (the first), as pipeline inputs, shortest document first."""
    payload = json.loads(NQ_FILE.read_text())
    documents = [
        {"question": paragraph["qas"][0]["question"], "context": paragraph["context"]}
        for article in payload["data"] for paragraph in article["paragraphs"] if paragraph["qas"]
    ]
    return sorted(documents, key=lambda document: len(document["context"]))


def build_checkpoints(folder: Path, documents: list[dict], memory_num_tokens: int) -> dict[str, Path]:
    """A memory model and a no-memory model of the same size, sharing one tokenizer trained on the documents."""
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(d["context"] + "\n" + d["question"] for d in documents), encoding="utf-8")
    tokenizer = train_xlnet_tokenizer([corpus], vocab_size=8000, model_max_length=SEGMENTING["max_seq_len"])
    read_ids, write_ids = add_memory_tokens(tokenizer, memory_num_tokens)
    checkpoints = {}
    for name, m in (("memory", memory_num_tokens), ("chunk_independent", 0)):
        config = MemXLNetConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, memory_num_tokens=m,
            mem_read_token_ids=read_ids if m else None, mem_write_token_ids=write_ids if m else None, **MODEL_SIZE,
        )
        torch.manual_seed(0)
        directory = folder / name
        MemXLNetForQuestionAnswering(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        checkpoints[name] = directory
    return checkpoints


def load_pipe(directory: Path) -> MemXLNetQuestionAnsweringPipeline:
    model = MemXLNetForQuestionAnswering.from_pretrained(directory).eval()
    return MemXLNetQuestionAnsweringPipeline(model=model, tokenizer=AutoTokenizer.from_pretrained(directory), device=-1)


def process_memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


def measure_peak_memory(directory: str, document_index: str) -> None:
    """Child process: how far one pipeline call raises the resident set above its level before the call, then the
    traced (Python and numpy) peak of a second call."""
    torch.set_num_threads(1)
    pipe = load_pipe(Path(directory))
    document = load_documents()[int(document_index)]
    pipe(question="warm up?", context="A short warm-up context.", **SEGMENTING)
    num_segments = pipe.preprocess(document, **SEGMENTING)["num_segments"]
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak (VmHWM) to the current resident set
    before = process_memory_kib("VmRSS")
    pipe(document, **SEGMENTING, handle_impossible_answer=True)
    growth = (process_memory_kib("VmHWM") - before) / 1024
    tracemalloc.start()
    pipe(document, **SEGMENTING, handle_impossible_answer=True)
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    print(json.dumps({"segments": num_segments, "peak_growth_mib": growth, "traced_peak_mib": traced}))


def peak_memory_in_fresh_processes(directory: Path, document_index: int, repeats: int) -> dict:
    """Median peak RSS growth over `repeats` fresh processes, with every sample, and the traced peak."""
    samples = []
    for _ in range(repeats):
        result = subprocess.run(
            [sys.executable, __file__, "--measure_peak_memory", str(directory), str(document_index)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        )
        samples.append(json.loads(result.stdout.strip().splitlines()[-1]))
    growth = [sample["peak_growth_mib"] for sample in samples]
    return {
        "segments": samples[0]["segments"],
        "peak_growth_mib": statistics.median(growth),
        "samples_mib": growth,
        "traced_peak_mib": statistics.median(sample["traced_peak_mib"] for sample in samples),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_documents", type=int, default=8, help="the N shortest of the 21 documents")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8, help="documents per time step / segments per forward")
    parser.add_argument("--memory_num_tokens", type=int, default=8)
    parser.add_argument("--memory_repeats", type=int, default=5, help="fresh processes per peak-memory measurement")
    parser.add_argument("--output", default=str(REPO_ROOT / "bench" / "results" / "pipeline.json"))
    parser.add_argument("--measure_peak_memory", nargs=2, metavar=("CHECKPOINT", "DOCUMENT_INDEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_peak_memory:
        return measure_peak_memory(*args.measure_peak_memory)
    if not NQ_FILE.is_file():
        sys.exit(f"skipped: {NQ_FILE} not found (set HF_MEMORY_DATA to ../shared/data)")
    torch.set_num_threads(1)  # the machine is shared; one thread keeps the two modes comparable
    all_documents = load_documents()
    documents = all_documents[: args.num_documents]
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = build_checkpoints(Path(folder), all_documents, args.memory_num_tokens)
        pipes = {name: load_pipe(directory) for name, directory in checkpoints.items()}
        segments = {
            name: [pipe.preprocess(d, **SEGMENTING)["num_segments"] for d in documents] for name, pipe in pipes.items()
        }
        for pipe in pipes.values():  # warm-up
            pipe(documents[:2], batch_size=args.batch_size, **SEGMENTING)
        seconds = {name: [] for name in pipes}
        for _ in range(args.repeats):  # interleaved, so load changes hit both modes alike
            for name, pipe in pipes.items():
                start = time.perf_counter()
                pipe(documents, batch_size=args.batch_size, handle_impossible_answer=True, **SEGMENTING)
                seconds[name].append(time.perf_counter() - start)
        # Memory per segment count: the shortest and the longest of all documents, each in a fresh process.
        peak = {
            name: {"shortest_document": peak_memory_in_fresh_processes(directory, 0, args.memory_repeats),
                   "longest_document": peak_memory_in_fresh_processes(
                       directory, len(all_documents) - 1, args.memory_repeats)}
            for name, directory in checkpoints.items()
        }
    docs_per_s = {name: len(documents) / statistics.median(times) for name, times in seconds.items()}
    extra_segments = (peak["memory"]["longest_document"]["segments"] - peak["memory"]["shortest_document"]["segments"])
    # float32 start + end logits, plus int64 input_ids / attention_mask / token_type_ids of the extra segments
    logits_and_inputs_growth_mib = (2 * 4 + 3 * 8) * SEGMENTING["max_seq_len"] * extra_segments / 2**20
    result = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "documents": len(documents),
        "segments_per_document": {name: {"min": min(s), "max": max(s), "total": sum(s)} for name, s in segments.items()},
        "model": {**MODEL_SIZE, "memory_num_tokens": args.memory_num_tokens},
        "segmenting": SEGMENTING,
        "batch_size": args.batch_size,
        "seconds": seconds,
        "documents_per_s": docs_per_s,
        "memory_vs_chunk_independent": docs_per_s["memory"] / docs_per_s["chunk_independent"],
        "target_ratio": 0.9,
        "peak_rss_growth": peak,
        "logits_and_inputs_growth_mib_shortest_to_longest": logits_and_inputs_growth_mib,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
