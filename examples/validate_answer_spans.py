"""Check that a SQuAD file's answers survive segmentation: every answer's token labels map back to its exact characters.

    python examples/validate_answer_spans.py --dataset squad_v2 --split validation
    python examples/validate_answer_spans.py --dataset path/to/train.json --model-path outputs/memxlnet-differentiable/final

Runs the same cleaning (`hf_memory.data.load_raw_datasets`) and segmentation (`preprocess_qa_dataset`, memory tokens
included) as `run_qa.py`, then, per question, reads back the characters of the labelled token span through the
offset mapping and compares them with the gold answer text. Reported counts:

  raw answer_start mismatches   context[answer_start:...] != text in the file (cleaning repairs or drops them)
  exact                         the labelled span's characters are exactly the answer
  token boundary                the span covers the answer plus neighbouring characters (a token straddles a
                                boundary of the answer; EM can never be reached from these labels)
  wrong text                    the span's characters do not contain the answer (a bug)
  answer not in any kept segment: cut by max_n_segs, or no single window holds the whole answer
  label errors                  a label that is not on the context (memory token, question, padding), or a no-answer
                                label that is not the segment's <cls> token
  memory layout errors          a segment without exactly m READ and m WRITE tokens

`--dataset squad_v2` with `--split validation` (or `train`) is the local SQuAD 2.0 dev data under ../shared/data;
any other value is a SQuAD-format JSON file. Without `--model-path` an XLNet-style tokenizer is trained on the file.
Writes `--output` (JSON with the counts and the first mismatches).
"""

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data")) / "squad_v2"
sys.path.insert(0, str(REPO_ROOT))

from transformers import AutoConfig, AutoTokenizer  # noqa: E402

from hf_memory import add_memory_tokens, get_memory_token_ids, train_xlnet_tokenizer  # noqa: E402
from hf_memory.data import load_raw_datasets, load_squad_json, preprocess_qa_dataset  # noqa: E402

LOCAL_SPLITS = {"validation": "dev-v2.0-first5articles.json", "train": "dev-v2.0-part-a.json"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="squad_v2", help="'squad_v2' (local dev data) or a SQuAD-format JSON.")
    parser.add_argument("--split", choices=sorted(LOCAL_SPLITS), default="validation", help="With --dataset squad_v2.")
    parser.add_argument("--model-path", default=None, help="Take the tokenizer (and memory tokens) from a checkpoint.")
    parser.add_argument("--memory-tokens", type=int, default=8, help="Without --model-path: memory token pairs.")
    parser.add_argument("--vocab-size", type=int, default=4000, help="Without --model-path: trained tokenizer size.")
    parser.add_argument("--max-examples", type=int, default=None, help="Check only the first N questions.")
    parser.add_argument("--max-seq-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--max-query-length", type=int, default=64)
    parser.add_argument("--max-n-segs", type=int, default=None, help="Keep at most this many segments per document.")
    parser.add_argument("--show", type=int, default=5, help="Print this many mismatches.")
    parser.add_argument("--output", default="answer_span_validation.json")
    return parser.parse_args(argv)


def dataset_path(args) -> Path:
    return DATA_DIR / LOCAL_SPLITS[args.split] if args.dataset == "squad_v2" else Path(args.dataset)


def load_tokenizer(args, path: Path):
    """The checkpoint's tokenizer and memory ids, or a tokenizer trained on the file with `--memory-tokens` added."""
    if args.model_path:
        tokenizer = AutoTokenizer.from_pretrained(args.model_path)
        memory_num_tokens = getattr(AutoConfig.from_pretrained(args.model_path), "memory_num_tokens", 0)
        return tokenizer, *get_memory_token_ids(tokenizer, memory_num_tokens)
    tokenizer = train_xlnet_tokenizer([path], vocab_size=args.vocab_size, model_max_length=args.max_seq_length)
    return tokenizer, *add_memory_tokens(tokenizer, args.memory_tokens)


def raw_answer_start_mismatches(records: list[dict]) -> int:
    return sum(
        record["context"][start:start + len(text)] != text
        for record in records
        for text, start in zip(record["answers"]["text"], record["answers"]["answer_start"])
    )


def check_question(example: dict, feature: dict, tokenizer, read_ids, write_ids) -> tuple[str, dict]:
    """One question's verdict and, unless exact or unanswerable, the details to show."""
    cls_id, m = tokenizer.cls_token_id, len(read_ids)
    errors = []
    labelled = []
    for step, (ids, types, offsets, start, end) in enumerate(zip(
        feature["input_ids"], feature["token_type_ids"], feature["offset_mapping"],
        feature["start_positions"], feature["end_positions"],
    )):
        if sum(token in read_ids for token in ids) != m or sum(token in write_ids for token in ids) != m:
            errors.append(f"segment {step}: memory layout")
        cls_index = len(ids) - 1
        if ids[cls_index] != cls_id:
            errors.append(f"segment {step}: last token is not <cls>")
        if (start, end) == (cls_index, cls_index):
            continue
        if not (start <= end and offsets[start] is not None and offsets[end] is not None and types[start] == 0):
            errors.append(f"segment {step}: label ({start}, {end}) is not on the context")
            continue
        labelled.append((step, offsets[start][0], offsets[end][1]))
    answers = example["answers"]["text"]
    if errors:
        return "label or layout error", {"errors": errors}
    if not answers:
        return ("unanswerable" if not labelled else "label on an unanswerable question"), {}
    gold = answers[0]
    if not labelled:
        cut = feature["num_windows"] > feature["num_segments"]
        reason = "answer not in kept segments (max_n_segs)" if cut else "answer not inside any single window"
        return reason, {"answer": gold}
    spans = {example["context"][first:last] for _, first, last in labelled}
    if spans == {gold}:
        return "exact", {}
    recovered = next(iter(spans - {gold}))
    details = {"answer": gold, "answer_start": example["answers"]["answer_start"][0], "labelled_text": recovered}
    return ("token boundary" if gold in recovered else "wrong text"), details


def main(argv=None):
    args = parse_args(argv)
    path = dataset_path(args)
    if not path.is_file():
        sys.exit(f"{path} not found (set HF_MEMORY_DATA to the shared data folder, or pass --dataset FILE).")
    records = load_squad_json(path)
    examples = load_raw_datasets(data_files={"validation": str(path)})["validation"]
    if args.max_examples is not None:
        records = records[: args.max_examples]
        examples = examples.select(range(min(args.max_examples, len(examples))))
    tokenizer, read_ids, write_ids = load_tokenizer(args, path)
    features = preprocess_qa_dataset(
        examples, tokenizer, split="validation", max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
        max_n_segs=args.max_n_segs, max_query_length=args.max_query_length, memory_read_ids=read_ids,
        memory_write_ids=write_ids, load_from_cache_file=False,
    )
    verdicts, shown = Counter(), []
    for example, feature in zip(examples, features):
        verdict, details = check_question(example, feature, tokenizer, read_ids, write_ids)
        verdicts[verdict] += 1
        if details and len(shown) < args.show:
            shown.append({"id": example["id"], "verdict": verdict, "question": example["question"], **details})

    answerable = sum(count for verdict, count in verdicts.items() if verdict != "unanswerable")
    report = {
        "file": str(path),
        "questions_in_file": len(records),
        "questions_after_cleaning": len(examples),
        "raw_answer_start_mismatches": raw_answer_start_mismatches(records),
        "segmentation": {"max_seq_length": args.max_seq_length, "doc_stride": args.doc_stride,
                         "max_query_length": args.max_query_length, "max_n_segs": args.max_n_segs,
                         "memory_tokens": len(read_ids), "segments": sum(features["num_segments"])},
        "verdicts": dict(verdicts.most_common()),
        "exact_fraction_of_answerable": verdicts["exact"] / answerable if answerable else None,
        "examples": shown,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{path.name}: {len(records)} questions, {report['raw_answer_start_mismatches']} raw answer_start "
          f"mismatches, {len(examples)} after cleaning, {report['segmentation']['segments']} segments")
    for verdict, count in verdicts.most_common():
        print(f"  {verdict:45s} {count:6d}")
    if report["exact_fraction_of_answerable"] is not None:
        print(f"exact character match for {100 * report['exact_fraction_of_answerable']:.2f}% of answerable questions")
    for item in shown:
        print(f"  - [{item['verdict']}] {item['question']!r}: " + json.dumps(
            {key: value for key, value in item.items() if key not in ("verdict", "question", "id")}))
    print(f"Report saved to {args.output}")


if __name__ == "__main__":
    main()
