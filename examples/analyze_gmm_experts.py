"""Interpretability analysis of a GMMXLNet checkpoint: routing, utilisation, entropy, diversity, consistency.

    python examples/analyze_gmm_experts.py --model-path outputs/gmm-xlnet-demo/final \
        --data-path validation --output-dir expert_analysis --max-segments 500
    python examples/analyze_gmm_experts.py --model-path outputs/gmm-xlnet-demo/final --max-segments 100 --quick

`--data-path` is a SQuAD-format JSON file; `validation` means the local SQuAD v2 dev file. Writes
`<output-dir>/analysis_report.json` and, unless `--quick`, the plots routing_heatmap.png, expert_utilization.png,
entropy_timeline.png and expert_diversity.png (matplotlib from the `analysis` extra).
"""

import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data")) / "squad_v2"
sys.path.insert(0, str(REPO_ROOT))

from transformers import AutoModelForQuestionAnswering, AutoTokenizer  # noqa: E402

from hf_memory.analysis import GMMAnalyzer, squad_document_dataloader  # noqa: E402
from hf_memory.training.arguments import missing_local_model_path  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="GMMXLNet checkpoint folder (or Hub id).")
    parser.add_argument("--data-path", default="validation", help="SQuAD-format JSON, or 'validation'.")
    parser.add_argument("--output-dir", default="expert_analysis")
    parser.add_argument("--max-segments", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="Statistics only, no plots.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=192)
    parser.add_argument("--doc-stride", type=int, default=32)
    parser.add_argument("--max-query-length", type=int, default=32)
    args = parser.parse_args(argv)
    path = args.model_path
    if missing_local_model_path(path):
        parser.error(f"--model-path {path} is not a folder (nor a Hub id); train one first "
                     "(python examples/train_with_gmm_memory.py writes outputs/gmm-xlnet-demo/final).")
    return args


def main(argv=None):
    args = parse_args(argv)
    data_path = DATA_DIR / "dev-v2.0-first5articles.json" if args.data_path == "validation" else args.data_path
    model = AutoModelForQuestionAnswering.from_pretrained(args.model_path)
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    # Documents have several segments: the segment cap stops tracking, so a bounded set of questions suffices.
    dataloader = squad_document_dataloader(
        data_path, tokenizer, model.config, max_examples=args.max_segments, batch_size=args.batch_size,
        max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length,
    )
    analyzer = GMMAnalyzer(model)
    analyzer.track_routing(dataloader, max_segments=args.max_segments)
    report = analyzer.save_report(os.path.join(args.output_dir, "analysis_report.json"))
    if not args.quick:
        for path in analyzer.save_plots(args.output_dir):
            print(f"wrote {path}")
    print(json.dumps({key: report[key] for key in ("routing_statistics", "routing_consistency",
                                                   "mean_off_diagonal_similarity")}, indent=2))
    print(f"Report saved to {os.path.join(args.output_dir, 'analysis_report.json')}")


if __name__ == "__main__":
    main()
