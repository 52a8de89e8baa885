"""Train a MemXLNet QA model whose memory is a content-addressed matrix (DNC-style), with the official-style run_qa.py.

    python examples/train_with_differentiable_memory.py
    python examples/train_with_differentiable_memory.py --memory-slots 32 --num-heads 4 --epochs 3 --analyze-memory

The differentiable memory (`memory_impl="differentiable"`) keeps `--memory-slots` rows; after every segment the
WRITE-token states drive `--num-heads` write heads (content or usage-based addressing, erase and add vectors), and
WRITE token i drives read head i (content, or forward/backward along the temporal links of the write order), whose
read vector fills READ token i of the next segment. Gradients flow through all of it across segments.

Without `--model-name-or-path` a small model is trained from scratch with a tokenizer trained on the training file
(CPU, one to two minutes with the defaults); with a no-memory checkpoint the memory is added to it (memory geometry
then follows the config defaults). Outputs: `<output-dir>/final/` (checkpoint, tokenizer, remote code, metrics) and,
with `--analyze-memory`, `<output-dir>/memory_analysis/` (plots of READ-token attention and slot updates on a long
document, see analyze_memory_attention.py).
"""

import argparse
import json
import os
import sys
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
REPO_ROOT = EXAMPLES_DIR.parent
DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data")) / "squad_v2"
sys.path[:0] = [str(REPO_ROOT), str(EXAMPLES_DIR)]

import analyze_memory_attention  # noqa: E402
import run_qa  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-tokens", type=int, default=8, help="READ/WRITE token pairs per segment (read heads).")
    parser.add_argument("--memory-slots", type=int, default=16, help="Rows of the memory matrix.")
    parser.add_argument("--num-heads", type=int, default=4, help="Write heads.")
    parser.add_argument("--no-usage-tracking", action="store_true", help="Content addressing only (no allocation).")
    parser.add_argument("--no-temporal-links", action="store_true", help="No forward/backward read modes.")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-steps", type=int, default=-1, help="Stop after this many steps (overrides --epochs).")
    parser.add_argument("--batch-size", type=int, default=4, help="Documents per batch.")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--output-dir", default="outputs/memxlnet-differentiable")
    parser.add_argument("--train-file", default=str(DATA_DIR / "dev-v2.0-part-a.json"), help="SQuAD-format JSON.")
    parser.add_argument("--eval-file", default=str(DATA_DIR / "dev-v2.0-first5articles.json"),
                        help="SQuAD-format JSON.")
    parser.add_argument("--max-train-samples", type=int, default=64)
    parser.add_argument("--max-eval-samples", type=int, default=32)
    parser.add_argument("--model-name-or-path", default=None, help="No-memory checkpoint to start from.")
    parser.add_argument("--model-shape", default="d_model=64,n_layer=2,n_head=4,d_inner=256",
                        help="Config overrides of the from-scratch model.")
    parser.add_argument("--vocab-size", type=int, default=1000, help="From scratch: size of the trained tokenizer.")
    parser.add_argument("--max-seq-length", type=int, default=192)
    parser.add_argument("--doc-stride", type=int, default=32)
    parser.add_argument("--max-segments", type=int, default=4, help="Segments per document (max_n_segs).")
    parser.add_argument("--analyze-memory", action="store_true", help="Plot memory attention on a long document.")
    args = parser.parse_args(argv)
    custom_geometry = (args.memory_slots, args.num_heads, args.no_usage_tracking, args.no_temporal_links) != (
        16, 4, False, False)
    if args.model_name_or_path and custom_geometry:
        parser.error("--memory-slots/--num-heads/--no-usage-tracking/--no-temporal-links apply to from-scratch "
                     "training; drop them with --model-name-or-path.")
    return args


def run_qa_arguments(args) -> list[str]:
    argv = [
        "--model_type", "memxlnet", "--memory_impl", "differentiable", "--memory_num_tokens", str(args.memory_tokens),
        "--train_file", args.train_file, "--validation_file", args.eval_file, "--version_2_with_negative",
        "--max_train_samples", str(args.max_train_samples), "--max_eval_samples", str(args.max_eval_samples),
        "--max_seq_length", str(args.max_seq_length), "--doc_stride", str(args.doc_stride),
        "--max_query_length", "32", "--max_n_segs", str(args.max_segments),
        "--do_train", "--do_eval", "--num_train_epochs", str(args.epochs), "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--logging_steps", "5", "--save_strategy", "no",
        "--report_to", "none", "--output_dir", os.path.join(args.output_dir, "final"),
    ]
    if args.model_name_or_path:
        return argv + ["--model_name_or_path", args.model_name_or_path]
    memory_shape = (f"memory_slots={args.memory_slots},memory_num_heads={args.num_heads},"
                    f"memory_use_usage_tracking={not args.no_usage_tracking},"
                    f"memory_use_temporal_links={not args.no_temporal_links}")
    return argv + ["--train_tokenizer_vocab_size", str(args.vocab_size),
                   "--config_overrides", f"{args.model_shape},{memory_shape}"]


def main(argv=None):
    args = parse_args(argv)
    final_dir = os.path.join(args.output_dir, "final")
    run_qa.main(run_qa_arguments(args))
    metrics = json.loads(Path(final_dir, "eval_results.json").read_text())
    config = json.loads(Path(final_dir, "config.json").read_text())
    print(f"memory: {config['memory_slots']} slots x d_model {config['d_model']}, {config['memory_num_heads']} write "
          f"heads, {config['memory_num_tokens']} read heads (usage tracking {config['memory_use_usage_tracking']}, "
          f"temporal links {config['memory_use_temporal_links']})")
    print(f"EM {metrics['eval_exact']:.2f}  F1 {metrics['eval_f1']:.2f} on {args.max_eval_samples} questions")
    if args.analyze_memory:
        analyze_memory_attention.main([
            "--model-path", final_dir, "--output-dir", os.path.join(args.output_dir, "memory_analysis"),
            "--max-seq-length", str(args.max_seq_length), "--doc-stride", str(args.doc_stride),
        ])
    print(f"Model saved to {final_dir}")


if __name__ == "__main__":
    main()
