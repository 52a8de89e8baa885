"""BABILong-style long-context QA: real bAbI facts scattered, in order, through real filler text.

The result is SQuAD v2 JSON, so `run_qa.py` trains and evaluates on it unchanged. A document's length is set in
segments: the context fills `num_segments` windows of `max_seq_length` tokens (after the question, memory and
special tokens, with `doc_stride` overlap), so the answer-bearing facts end up spread across segments and only a
model that carries memory between segments can combine them.
"""

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from ..models.memxlnet.qa_processing_memxlnet import context_budget

# Renaming pools for training-time augmentation: bAbI-1k has 4 people and 6 places in 1,000 stories, which a small
# model memorises instead of learning to bind facts. The original names are part of the pools.
PEOPLE = ("Mary John Daniel Sandra Alice Bob Carol David Emma Frank Grace Henry Irene Jack Kate Liam Nina Oscar Paul "
          "Rita Sam Tina Victor Wendy").split()
PLACES = ("bathroom bedroom garden hallway kitchen office attic basement cellar garage library balcony pantry studio "
          "porch lobby terrace workshop nursery chapel").split()


@dataclass
class BabiQuestion:
    story: list[str]
    question: str
    answer: str
    supporting_lines: list[int]


def read_babi(path: str | Path) -> list[BabiQuestion]:
    """Parse a bAbI task file: `ID sentence` lines, question lines `ID question<TAB>answer<TAB>supporting ids`."""
    questions, story, line_to_index = [], [], {}
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip("\n")
            if not raw.strip():
                continue
            line_id, _, text = raw.partition(" ")
            if not line_id.isdigit():
                raise ValueError(f"{path}:{number}: expected 'ID text', got {raw!r}.")
            if line_id == "1":
                story, line_to_index = [], {}
            if "\t" in text:
                question, answer, supporting = (part.strip() for part in text.split("\t"))
                lines = [line_to_index[int(i)] for i in supporting.split()]
                questions.append(BabiQuestion(list(story), question, answer, lines))
            else:
                line_to_index[int(line_id)] = len(story)
                story.append(text.strip())
    return questions


def read_filler_sentences(path: str | Path) -> list[str]:
    """Sentences of a filler corpus (WikiText-style headings and blank lines dropped)."""
    text = Path(path).read_text(encoding="utf-8").replace("\r\n", "\n")
    paragraphs = [p.strip() for p in text.split("\n") if p.strip() and not p.strip().startswith("=")]
    sentences = []
    for paragraph in paragraphs:
        sentences.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", paragraph) if len(s.strip()) > 20)
    if not sentences:
        raise ValueError(f"No filler sentences found in {path}.")
    return sentences


def context_token_budget(max_seq_length: int, question_tokens: int, memory_num_tokens: int) -> int:
    budget = context_budget(max_seq_length, memory_num_tokens, question_tokens)
    if budget <= 0:
        raise ValueError(
            f"max_seq_length={max_seq_length} leaves no room for context after the question ({question_tokens} "
            f"tokens) and {2 * memory_num_tokens} memory tokens. Fix: raise max_seq_length."
        )
    return budget


def _facts_that_fit(item: BabiQuestion, fact_lengths: list[int], target_tokens: int) -> list[int]:
    """Story lines to keep: all of them, or without the oldest distractors when the story alone is too long."""
    kept = list(range(len(item.story)))
    supporting = set(item.supporting_lines)
    distractors = [i for i in kept if i not in supporting]
    while sum(fact_lengths[i] for i in kept) > target_tokens and distractors:
        kept.remove(distractors.pop(0))
    return kept


def rename_entities(item: BabiQuestion, rng: random.Random) -> BabiQuestion:
    """The same question with its people and places renamed consistently (a random one-to-one map per story)."""
    text = " ".join(item.story + [item.question, item.answer])
    people = sorted(set(re.findall(r"\b(?:" + "|".join(PEOPLE) + r")\b", text)))
    places = sorted(set(re.findall(r"\b(?:" + "|".join(PLACES) + r")\b", text)))
    mapping = dict(zip(people, rng.sample(PEOPLE, len(people)))) | dict(zip(places, rng.sample(PLACES, len(places))))
    if not mapping:
        return item
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, mapping)) + r")\b")
    rename = lambda sentence: pattern.sub(lambda match: mapping[match.group(0)], sentence)  # noqa: E731
    return BabiQuestion([rename(line) for line in item.story], rename(item.question), rename(item.answer),
                        item.supporting_lines)


def build_document(
    item: BabiQuestion,
    filler: list[str],
    filler_lengths: list[int],
    fact_lengths: list[int],
    target_tokens: int,
    rng: random.Random,
    min_filler_tokens: int = 8,
) -> tuple[str, int]:
    """Scatter the story's facts in order through consecutive filler sentences; return (context, answer_start)."""
    answer_line = max(i for i in item.supporting_lines if re.search(rf"\b{re.escape(item.answer)}\b", item.story[i]))
    kept = _facts_that_fit(item, fact_lengths, target_tokens)
    needed = target_tokens - sum(fact_lengths[i] for i in kept)
    start = rng.randrange(len(filler))
    chosen, total = [], 0
    for step in range(len(filler)):
        index = (start + step) % len(filler)
        if total + filler_lengths[index] <= needed:
            chosen.append(filler[index])
            total += filler_lengths[index]
        if needed - total < min_filler_tokens:
            break
    slots = sorted(rng.randrange(len(chosen) + 1) for _ in kept)
    pieces, answer_start, filler_iter = [], -1, iter(range(len(chosen)))
    position, offset = 0, 0
    for fact_index, slot in zip(kept, slots):
        while position < slot:
            pieces.append(chosen[next(filler_iter)])
            offset += len(pieces[-1]) + 1
            position += 1
        if fact_index == answer_line:
            answer_start = offset + re.search(rf"\b{re.escape(item.answer)}\b", item.story[fact_index]).start()
        pieces.append(item.story[fact_index])
        offset += len(pieces[-1]) + 1
    pieces.extend(chosen[i] for i in filler_iter)
    return " ".join(pieces), answer_start


def build_babilong(
    babi_file: str | Path,
    filler_file: str | Path,
    tokenizer,
    num_segments: int,
    max_seq_length: int = 128,
    doc_stride: int = 0,
    memory_num_tokens: int = 4,
    max_examples: int | None = None,
    seed: int = 0,
    task_name: str | None = None,
    augment_entities: bool = False,
    skip_examples: int = 0,
) -> dict:
    """Build a SQuAD v2 payload whose contexts span `num_segments` segments of `max_seq_length` tokens.

    `augment_entities` renames people and places per story (for training sets, so that the model must bind facts
    instead of memorising the stories). `skip_examples` starts after the first questions of the file (a development
    split taken from the test file after the questions used for evaluation).
    """
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}.")
    if skip_examples < 0:
        raise ValueError(f"skip_examples must be >= 0, got {skip_examples}.")
    rng = random.Random(seed)
    end = None if max_examples is None else skip_examples + max_examples
    questions = read_babi(babi_file)[skip_examples:end]
    if not questions:
        raise ValueError(f"{babi_file} has no questions after skip_examples={skip_examples}. Fix: skip fewer.")
    if augment_entities:
        questions = [rename_entities(item, rng) for item in questions]
    filler = read_filler_sentences(filler_file)

    def count(texts):  # verbose=False: long filler sentences are counted, never fed to a model whole
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    filler_lengths = count(filler)
    longest_question = max(count(sorted({q.question for q in questions})))
    budget = context_token_budget(max_seq_length, longest_question, memory_num_tokens)
    if doc_stride >= budget:
        raise ValueError(f"doc_stride={doc_stride} must be smaller than the context budget of {budget} tokens.")
    # n segments with overlap `doc_stride` cover budget + (n - 1) * (budget - doc_stride) tokens; aim just below.
    target = budget + (num_segments - 1) * (budget - doc_stride) - budget // 4
    task_name = task_name or Path(babi_file).stem
    data = []
    for index, item in enumerate(questions, start=skip_examples):
        context, answer_start = build_document(item, filler, filler_lengths, count(item.story), target, rng)
        data.append({
            "title": f"{task_name}-{index}",
            "paragraphs": [{
                "context": context,
                "qas": [{
                    "id": f"{task_name}-{num_segments}seg-{index}",
                    "question": item.question,
                    "answers": [{"text": item.answer, "answer_start": answer_start}],
                    "is_impossible": False,
                }],
            }],
        })
    return {"version": "v2.0", "data": data}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build BABILong-style long-context QA as SQuAD v2 JSON.")
    parser.add_argument("--babi_file", required=True, help="a bAbI task file, e.g. qa1_single-supporting-fact_train.txt")
    parser.add_argument("--filler_file", required=True, help="real filler text, e.g. wikitext-2-raw-test.txt")
    parser.add_argument("--tokenizer_name", required=True, help="tokenizer used to measure segment lengths")
    parser.add_argument("--num_segments", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--doc_stride", type=int, default=0)
    parser.add_argument("--memory_num_tokens", type=int, default=4)
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--skip_examples", type=int, default=0, help="start after this many questions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment_entities", action="store_true", help="rename people and places per story")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for num_segments in args.num_segments:
        payload = build_babilong(
            args.babi_file, args.filler_file, tokenizer, num_segments, args.max_seq_length, args.doc_stride,
            args.memory_num_tokens, args.max_examples, args.seed, augment_entities=args.augment_entities,
            skip_examples=args.skip_examples,
        )
        path = output_dir / f"{Path(args.babi_file).stem}-{num_segments}seg.json"
        path.write_text(json.dumps(payload))
        print(f"wrote {len(payload['data'])} documents to {path}")


if __name__ == "__main__":
    main()
