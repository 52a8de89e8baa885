#!/usr/bin/env python
"""Memory on long documents: exact match by document length on BABILong-style bAbI qa1/qa2.

One command trains a tiny XLNet without memory on 1-segment documents (the shared warm start), then from that same
checkpoint with the same number of steps on 4-segment documents: no memory, MemXLNet token memory (gated), MemXLNet
differentiable memory and GMMXLNet (k=4); `--variants` adds `memxlnet_token_gated_replace` and the same memory reading
documents backward or in both directions (`..._backward`, `..._bidirectional`). Each model is evaluated
on held-out stories (the bAbI *_test.txt files) at 1, 2, 4, 8 and 16 segments. All training and evaluation runs go
through run_qa.py.

    python bench/bench_babilong.py                      # CPU, defaults sized for under an hour on 2 cores
    python bench/bench_babilong.py --device cuda        # the same on a GPU
    python bench/bench_babilong.py --tasks qa1 qa2      # train on qa1+qa2 mixed, report both

Writes bench/results/babilong.json (every number, step counts, config, wall times, command) and babilong.png.
Stages whose outputs exist in --work_dir are reused, so an interrupted run resumes.
"""

import argparse
import json
import shlex
import sys
import tempfile
import typing
from dataclasses import fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from hf_memory.experiments.babilong import (  # noqa: E402
    BabilongExperimentConfig,
    format_table,
    plot_results,
    run_experiment,
)

RESULTS_DIR = REPO_ROOT / "bench" / "results"


def argument_type(hint):
    """The command-line type of a config field annotation (`int | None` -> int, `list[int]` -> int)."""
    inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is list or (inner and hint is not bool):
        return argument_type(inner[0]) if inner else str
    if hint is bool:
        return lambda text: text.lower() in ("1", "true", "yes")
    return hint


def parse_args(argv=None) -> tuple[BabilongExperimentConfig, argparse.Namespace]:
    hints = typing.get_type_hints(BabilongExperimentConfig)
    names = [f.name for f in fields(BabilongExperimentConfig) if f.name != "output_dir"]
    config_defaults = BabilongExperimentConfig(output_dir="")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default=None, help="checkpoints and data (default: a fresh temporary folder)")
    parser.add_argument("--results_dir", default=str(RESULTS_DIR), help="where <results_name>.json/.png go")
    parser.add_argument("--results_name", default="babilong", help="file names of the results JSON and plot")
    for name in names:
        is_list = typing.get_origin(hints[name]) is list
        parser.add_argument(f"--{name}", type=argument_type(hints[name]), nargs="+" if is_list else None,
                            default=getattr(config_defaults, name))
    args = parser.parse_args(argv)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="hf_memory_babilong_")
    options = {name: getattr(args, name) for name in names}
    return BabilongExperimentConfig(output_dir=work_dir, **options), args


def main(argv=None) -> dict:
    config, args = parse_args(argv)
    print(f"work dir: {config.output_dir}")
    results = run_experiment(config)
    results["command"] = "python bench/bench_babilong.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = results_dir / f"{args.results_name}.json", results_dir / f"{args.results_name}.png"
    json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    plot_results(results, png_path)
    print("\nExact match (%) by document length, held-out stories:\n" + format_table(results))
    print(f"\ntotal wall time {results['total_wall_seconds'] / 60:.1f} min; wrote {json_path} and {png_path}")
    return results


if __name__ == "__main__":
    main()
