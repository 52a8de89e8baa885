"""Run every benchmark of the package, each in its own process, and print ONE table of ratios vs targets.

    python bench/run_all.py                       # every speed/memory benchmark, full settings (~20 min, 2-core CPU)
    python bench/run_all.py --quick               # smoke settings (a few minutes); results in bench/results/quick/
    python bench/run_all.py --include-babilong    # also the long-context exact-match benchmark (under an hour more)
    python bench/run_all.py --only qa_step gmm    # a subset

Every number in the table was measured by this run (a bench whose JSON was not rewritten is reported as failed),
each ratio against a baseline measured in the same bench process. The table and every bench's JSON are saved in
`<results-dir>/summary.json`; each bench's log in `<results-dir>/logs/`. Each bench also runs alone: see
bench/README.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


@dataclass
class Check:
    """One row of the table: a measured value and, when the bench has one, its target."""

    bench: str
    metric: str
    value: float | None
    target: str = ""
    passed: bool | None = None

    def verdict(self) -> str:
        if self.value is None:
            return "error"
        return "info" if self.passed is None else ("pass" if self.passed else "MISS")


def at_most(bench, metric, value, limit) -> Check:
    return Check(bench, metric, value, f"<= {limit:g}", value <= limit)


def at_least(bench, metric, value, limit) -> Check:
    return Check(bench, metric, value, f">= {limit:g}", value >= limit)


def info(bench, metric, value) -> Check:
    return Check(bench, metric, value)


def qa_step_checks(result: dict) -> list[Check]:
    rows = []
    for name, entry in result["models"].items():
        if name == "xlnet":
            continue
        rows.append(at_most("qa_step", f"{name} step time / XLNet (min)", entry["ratio_vs_xlnet"],
                            result["target_ratio"]))
        rows.append(info("qa_step", f"{name} step time / XLNet (median)", entry["median_ratio_vs_xlnet"]))
        rows.append(info("qa_step", f"{name} saved activations / XLNet", entry["saved_activations_ratio_vs_xlnet"]))
        rows.append(info("qa_step", f"{name} first-step peak RSS / XLNet", entry["peak_memory_ratio_vs_xlnet"]))
    return rows


def gmm_checks(result: dict) -> list[Check]:
    rows = []
    for name, entry in result["models"].items():
        if name == "memxlnet":
            continue
        rows.append(at_most("gmm", f"{name} step time / MemXLNet (median)", entry["ratio_vs_memxlnet"],
                            result["target_ratio"]))
        rows.append(info("gmm", f"{name} step time / MemXLNet (min)", entry["min_ratio_vs_memxlnet"]))
    return rows


def pipeline_checks(result: dict) -> list[Check]:
    peak = result["peak_rss_growth"]
    longest = {name: peak[name]["longest_document"]["peak_growth_mib"] for name in peak}
    return [
        at_least("pipeline", "memory docs/s / chunk-independent", result["memory_vs_chunk_independent"],
                 result["target_ratio"]),
        info("pipeline", "peak RSS growth, longest doc, memory / chunk-indep.",
             longest["memory"] / longest["chunk_independent"]),
    ]


def memory_transformer_checks(result: dict) -> list[Check]:
    rows = [
        at_least("memory_transformer", "training tokens/s / Llama", result["training"]["ratio"], 0.75),
        at_least("memory_transformer", "decoding tokens/s / Llama", result["decoding"]["ratio"], 0.8),
    ]
    if "training_heap_kept" in result:
        rows.append(at_least("memory_transformer", "training tokens/s / Llama, freed heap kept",
                             result["training_heap_kept"]["ratio"], 0.75))
    if "quality" in result:
        rows.append(info("memory_transformer", "valid loss memory - vanilla",
                         result["quality"]["valid_loss_delta_memory_minus_vanilla"]))
    return rows


def adapters_checks(result: dict) -> list[Check]:
    targets, rows = result["targets"], []
    for name, entry in result["settings"].items():
        rows.append(at_most("adapters", f"{name} forward time / base", entry["forward"]["ratio"],
                            targets["forward_ratio_max"]))
        rows.append(at_least("adapters", f"{name} decoding tokens/s / base", entry["decode"]["ratio"],
                             targets["decode_ratio_min"]))
    if "long_context" in result:
        long_context = result["long_context"]
        length = long_context["prompt_tokens"]
        rows.append(info("adapters", f"all_layers forward time / base, {length} tokens",
                         long_context["forward"]["ratio"]))
        rows.append(info("adapters", f"all_layers decoding tokens/s / base, {length}-token prompt",
                         long_context["decode"]["ratio"]))
    return rows


BABILONG_TARGETS = {"qa1": {"4": 95.0, "16": 85.0}}


def babilong_checks(result: dict) -> list[Check]:
    rows = []
    for variant, model in result["models"].items():
        for task, by_length in model["exact_match"].items():
            for length, exact in by_length.items():
                metric = f"{variant} {task} EM @{length} segments (%)"
                target = BABILONG_TARGETS.get(task, {}).get(length)
                has_memory = variant != "no_memory"
                rows.append(at_least("babilong", metric, exact, target) if target and has_memory
                            else info("babilong", metric, exact))
    return rows


@dataclass
class Bench:
    script: str
    quick_args: list[str]
    checks: Callable[[dict], list[Check]]
    full_args: list[str] = field(default_factory=list)
    optional: bool = False

    def command(self, name: str, quick: bool, results_dir: Path) -> tuple[list[str], Path]:
        """The bench's command line and where it writes its JSON."""
        args = [sys.executable, str(BENCH_DIR / self.script), *(self.quick_args if quick else self.full_args)]
        output = results_dir / f"{name}.json"
        if name == "babilong":  # writes <results_dir>/<results_name>.json and .png
            return [*args, "--results_dir", str(results_dir), "--results_name", name], output
        return [*args, "--output", str(output)], output


BENCHES = {
    "qa_step": Bench("bench_qa_step.py", ["--quick"], qa_step_checks),
    "gmm": Bench("bench_gmm.py", ["--preset", "tiny", "--repeats", "3", "--warmup", "1"], gmm_checks),
    "pipeline": Bench("bench_pipeline.py", ["--num_documents", "2", "--repeats", "1"], pipeline_checks),
    "memory_transformer": Bench("bench_memory_transformer.py", ["--quick"], memory_transformer_checks),
    "adapters": Bench("bench_adapters.py", ["--quick"], adapters_checks),
    "babilong": Bench(
        "bench_babilong.py",
        ["--warm_start_steps", "20", "--warm_start_max_extensions", "0", "--memory_steps", "20", "--eval_examples",
         "16", "--dev_examples", "8", "--eval_lengths", "1", "4", "--variants", "no_memory", "memxlnet_token_gated"],
        babilong_checks,
        optional=True,
    ),
}


def run_bench(name: str, bench: Bench, quick: bool, results_dir: Path, timeout: float | None) -> dict:
    """Run one bench in a fresh process; returns its status, wall time, JSON result and table rows."""
    command, output = bench.command(name, quick, results_dir)
    log_path = results_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    print(f"[{name}] {' '.join(command[1:])}", flush=True)
    started = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            returncode = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            returncode = "timeout"
    wall = time.time() - started
    status = {"command": command[1:], "log": str(log_path), "wall_seconds": wall, "returncode": returncode}
    fresh = output.is_file() and output.stat().st_mtime >= started
    if returncode != 0 or not fresh:
        reason = f"exit {returncode}" if returncode != 0 else f"{output} was not written"
        print(f"[{name}] FAILED ({reason}) after {wall:.0f} s; log: {log_path}", flush=True)
        return {**status, "error": reason, "rows": [Check(name, f"run failed: {reason}", None)]}
    result = json.loads(output.read_text())
    try:
        rows = bench.checks(result)
    except (KeyError, TypeError) as error:
        rows = [Check(name, f"result format not understood (missing {error})", None)]
    print(f"[{name}] done in {wall:.0f} s", flush=True)
    return {**status, "output": str(output), "result": result, "rows": rows}


def format_table(rows: list[Check]) -> str:
    header = f"{'bench':<19} {'metric':<55} {'value':>9}  {'target':<8} verdict"
    lines = [header, "-" * len(header)]
    for row in rows:
        value = "n/a" if row.value is None else f"{row.value:9.3f}"
        lines.append(f"{row.bench:<19} {row.metric:<55.55} {value:>9}  {row.target:<8} {row.verdict()}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke settings of every bench")
    parser.add_argument("--include-babilong", action="store_true", help="also run the long-context EM benchmark")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these benches")
    parser.add_argument("--results-dir", default=None,
                        help="where JSONs, logs and summary.json go (default bench/results, or bench/results/quick)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per bench (default: none)")
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)).resolve()
    names = args.only or [name for name, bench in BENCHES.items() if not bench.optional or args.include_babilong]

    started = time.time()
    runs = {name: run_bench(name, BENCHES[name], args.quick, results_dir, args.timeout) for name in names}
    rows = [row for run in runs.values() for row in run["rows"]]
    table = format_table(rows)
    print("\n" + table)
    judged = [row for row in rows if row.passed is not None]
    failed = [row for row in rows if row.value is None]
    caveat = " (quick settings: timings are not representative)" if args.quick else ""
    print(f"\n{sum(row.passed for row in judged)}/{len(judged)} targets met, {len(failed)} bench(es) failed; "
          f"{(time.time() - started) / 60:.1f} min{caveat}")

    summary = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_seconds": time.time() - started,
        "rows": [{**row.__dict__, "verdict": row.verdict()} for row in rows],
        "table": table,
        "benches": {name: {key: value for key, value in run.items() if key != "rows"} for name, run in runs.items()},
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"saved {results_dir / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
