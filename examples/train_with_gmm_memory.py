"""Train a GMMXLNet (multi-expert gated memory) QA model with the official-style `run_qa.py`.

    python examples/train_with_gmm_memory.py --num-experts 4 --epochs 3
    python examples/train_with_gmm_memory.py --num-experts 8 --memory-slots 32 --epochs 5 --batch-size 2
    python examples/train_with_gmm_memory.py --num-experts 4 --analyze-routing

Without `--model-name-or-path` a small model is trained from scratch with a tokenizer trained on the training
file (runs on a CPU in minutes); with it (e.g. `xlnet-base-cased`) memory is added to that checkpoint.
Outputs: `<output-dir>/final/` (checkpoint, tokenizer, remote code, routing logs in trainer_state.json),
`<output-dir>/config.json`, and with `--analyze-routing` `<output-dir>/routing_analysis/` (JSON report + plots).
"""

import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data")) / "squad_v2"
sys.path.insert(0, str(REPO_ROOT))

import run_qa  # noqa: E402
from transformers import AutoModelForQuestionAnswering, AutoTokenizer  # noqa: E402

from hf_memory.analysis import GMMAnalyzer, squad_document_dataloader  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-experts", type=int, default=4, help="Number of memory experts (2-8).")
    parser.add_argument("--memory-slots", type=int, default=16, help="Memory slots (token pairs) per expert.")
    parser.add_argument("--routing-temperature", type=float, default=1.0)
    parser.add_argument("--routing-mode", choices=["write-based", "read-based"], default="write-based")
    parser.add_argument("--pooling-method", choices=["mean", "max", "attention"], default="mean")
    parser.add_argument("--load-balance-weight", type=float, default=0.01)
    parser.add_argument("--entropy-weight", type=float, default=0.0, help="entropy_regularization_weight")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="Documents per batch.")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--analyze-routing", action="store_true", help="Analyse routing on the eval file afterwards.")
    parser.add_argument("--output-dir", default="outputs/gmm-xlnet-demo")
    parser.add_argument("--train-file", default=str(DATA_DIR / "dev-v2.0-part-a.json"), help="SQuAD-format JSON.")
    parser.add_argument("--eval-file", default=str(DATA_DIR / "dev-v2.0-first5articles.json"), help="SQuAD-format JSON.")
    parser.add_argument("--max-train-samples", type=int, default=64)
    parser.add_argument("--max-eval-samples", type=int, default=32)
    parser.add_argument("--model-name-or-path", default=None, help="Checkpoint to start from (default: from scratch).")
    parser.add_argument("--model-shape", default="d_model=64,n_layer=2,n_head=4,d_inner=256",
                        help="Config overrides of the from-scratch model.")
    parser.add_argument("--max-seq-length", type=int, default=192)
    parser.add_argument("--doc-stride", type=int, default=32)
    parser.add_argument("--max-segments", type=int, default=4, help="Segments per document (max_n_segs).")
    return parser.parse_args(argv)


def run_qa_arguments(args) -> list[str]:
    final_dir = os.path.join(args.output_dir, "final")
    argv = [
        "--model_type", "gmmxlnet", "--num_memory_experts", str(args.num_experts),
        "--memory_num_tokens", str(args.memory_slots), "--routing_temperature", str(args.routing_temperature),
        "--routing_mode", args.routing_mode, "--pooling_method", args.pooling_method,
        "--load_balance_weight", str(args.load_balance_weight),
        "--entropy_regularization_weight", str(args.entropy_weight),
        "--train_file", args.train_file, "--validation_file", args.eval_file, "--version_2_with_negative",
        "--max_train_samples", str(args.max_train_samples), "--max_eval_samples", str(args.max_eval_samples),
        "--max_seq_length", str(args.max_seq_length), "--doc_stride", str(args.doc_stride),
        "--max_query_length", "32", "--max_n_segs", str(args.max_segments),
        "--do_train", "--do_eval", "--num_train_epochs", str(args.epochs),
        "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--logging_steps", "5", "--save_strategy", "no",
        "--report_to", "none", "--output_dir", final_dir,
    ]
    if args.model_name_or_path:
        argv += ["--model_name_or_path", args.model_name_or_path]
    else:
        argv += ["--train_tokenizer_vocab_size", "1000", "--config_overrides", args.model_shape]
    return argv


def main(argv=None):
    args = parse_args(argv)
    final_dir = os.path.join(args.output_dir, "final")
    run_qa.main(run_qa_arguments(args))

    model = AutoModelForQuestionAnswering.from_pretrained(final_dir)
    model.config.to_json_file(os.path.join(args.output_dir, "config.json"))
    history = json.loads(Path(final_dir, "trainer_state.json").read_text())["log_history"]
    routing_logs = [entry for entry in history if "routing_entropy" in entry]
    if routing_logs:
        last = routing_logs[-1]
        usage = [round(last[f"routing_utilization_{j}"], 3) for j in range(args.num_experts)]
        print(f"Training routing (last log): entropy {last['routing_entropy']:.3f}, utilisation {usage}")

    if args.analyze_routing:
        tokenizer = AutoTokenizer.from_pretrained(final_dir)
        dataloader = squad_document_dataloader(
            args.eval_file, tokenizer, model.config, max_examples=args.max_eval_samples,
            batch_size=args.batch_size, max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
            max_query_length=32, max_n_segs=args.max_segments,
        )
        analyzer = GMMAnalyzer(model)
        stats = analyzer.track_routing(dataloader)
        output = os.path.join(args.output_dir, "routing_analysis")
        analyzer.save_report(os.path.join(output, "analysis_report.json"))
        analyzer.save_plots(output)
        print(f"Routing on {stats['total_segments']} eval segments: utilisation "
              f"{[round(u, 3) for u in stats['expert_utilization']]}, mean entropy {stats['mean_entropy']:.3f}")
        print(f"Report and plots in {output}")
    print(f"Model saved to {final_dir}")


if __name__ == "__main__":
    main()
