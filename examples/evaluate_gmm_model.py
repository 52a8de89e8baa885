"""Evaluate a trained GMMXLNet checkpoint (EM/F1 with run_qa.py) and, optionally, its routing behaviour.

    python examples/evaluate_gmm_model.py --model-path outputs/gmm-xlnet-demo/final
    python examples/evaluate_gmm_model.py --model-id username/gmm-xlnet-squad --from-hub
    python examples/evaluate_gmm_model.py --model-path outputs/gmm-xlnet-demo/final --analyze-routing \
        --output-dir evaluation_results

Writes `<output-dir>/evaluation_results.json` (QA metrics, plus routing statistics with `--analyze-routing`).
Use the segmentation flags the model was trained with (`--max-seq-length`, `--doc-stride`).
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-path", help="Local checkpoint folder.")
    source.add_argument("--model-id", help="Hugging Face Hub model id (with --from-hub).")
    parser.add_argument("--from-hub", action="store_true", help="Load --model-id from the Hub.")
    parser.add_argument("--analyze-routing", action="store_true", help="Also compute routing statistics.")
    parser.add_argument("--max-examples", type=int, default=None, help="Limit the evaluated questions.")
    parser.add_argument("--output-dir", default="evaluation_results")
    parser.add_argument("--eval-file", default=str(DATA_DIR / "dev-v2.0-first5articles.json"))
    parser.add_argument("--max-seq-length", type=int, default=192)
    parser.add_argument("--doc-stride", type=int, default=32)
    parser.add_argument("--max-query-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.model_id and not args.from_hub:
        parser.error("--model-id loads from the Hugging Face Hub: add --from-hub (or use --model-path).")
    if args.model_path and not Path(args.model_path).is_dir():
        parser.error(f"--model-path {args.model_path} is not a folder; train one first "
                     "(python examples/train_with_gmm_memory.py writes outputs/gmm-xlnet-demo/final).")
    return args


def main(argv=None):
    args = parse_args(argv)
    source = args.model_path or args.model_id
    segmenting = ["--max_seq_length", str(args.max_seq_length), "--doc_stride", str(args.doc_stride),
                  "--max_query_length", str(args.max_query_length)]
    run_qa_argv = ["--model_name_or_path", source, "--do_eval", "--validation_file", args.eval_file,
                   "--per_device_eval_batch_size", str(args.batch_size), "--output_dir", args.output_dir,
                   "--report_to", "none", *segmenting]
    if args.max_examples is not None:
        run_qa_argv += ["--max_eval_samples", str(args.max_examples)]
    run_qa.main(run_qa_argv)
    results = {"model": source, "metrics": json.loads(Path(args.output_dir, "eval_results.json").read_text())}

    if args.analyze_routing:
        model = AutoModelForQuestionAnswering.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        dataloader = squad_document_dataloader(
            args.eval_file, tokenizer, model.config, max_examples=args.max_examples, batch_size=args.batch_size,
            max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length,
        )
        analyzer = GMMAnalyzer(model)
        results["routing"] = analyzer.track_routing(dataloader)
        results["routing_consistency"] = analyzer.compute_routing_consistency()
        results["expert_diversity_matrix"] = analyzer.compute_expert_diversity().tolist()

    path = os.path.join(args.output_dir, "evaluation_results.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    metrics = results["metrics"]
    print(f"EM {metrics.get('eval_exact', float('nan')):.2f}  F1 {metrics.get('eval_f1', float('nan')):.2f}")
    if "routing" in results:
        routing = results["routing"]
        print(f"Expert utilisation {[round(u, 3) for u in routing['expert_utilization']]}, "
              f"mean entropy {routing['mean_entropy']:.3f} (max {routing['max_entropy']:.3f})")
    print(f"Results saved to {path}")


if __name__ == "__main__":
    main()
