import json
import re

import pytest
from transformers import AutoTokenizer

from hf_memory.data.babilong import build_babilong, context_token_budget, main, read_babi


@pytest.fixture(scope="module")
def babi_paths(data_dir):
    return {
        "qa1": data_dir / "babi" / "qa1_single-supporting-fact_test.txt",
        "qa2": data_dir / "babi" / "qa2_two-supporting-facts_test.txt",
        "filler": data_dir / "text" / "wikitext-2-raw-test.txt",
    }


def test_read_babi_keeps_story_prefix_and_supporting_lines(babi_paths):
    questions = read_babi(babi_paths["qa2"])
    assert len(questions) == 1000
    first = questions[0]
    assert first.question.endswith("?") and first.answer
    assert all(0 <= i < len(first.story) for i in first.supporting_lines)
    assert any(first.answer in first.story[i] for i in first.supporting_lines)


@pytest.mark.parametrize("task", ["qa1", "qa2"])
@pytest.mark.parametrize("num_segments", [1, 4])
def test_documents_span_the_requested_segments_and_answers_are_exact(task, num_segments, babi_paths,
                                                                       xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    payload = build_babilong(babi_paths[task], babi_paths["filler"], tokenizer, num_segments, max_seq_length=128,
                             memory_num_tokens=4, max_examples=40)
    questions = read_babi(babi_paths[task])[:40]
    longest_question = max(len(tokenizer(q.question, add_special_tokens=False)["input_ids"]) for q in questions)
    budget = context_token_budget(128, longest_question, 4)
    for article, source in zip(payload["data"], questions):
        paragraph = article["paragraphs"][0]
        qa = paragraph["qas"][0]
        answer = qa["answers"][0]
        context = paragraph["context"]
        assert context[answer["answer_start"] : answer["answer_start"] + len(answer["text"])] == answer["text"]
        # The answer sits in the last supporting fact that names it, and facts keep their story order.
        last_fact = max(i for i in source.supporting_lines if re.search(rf"\b{answer['text']}\b", source.story[i]))
        fact = source.story[last_fact]
        fact_start = answer["answer_start"] - re.search(rf"\b{answer['text']}\b", fact).start()
        assert context[fact_start : fact_start + len(fact)] == fact
        cursor = 0
        for line in sorted(source.supporting_lines):  # supporting facts are never dropped and keep story order
            cursor = context.index(source.story[line], cursor) + len(source.story[line])
        tokens = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        assert (num_segments - 1) * budget < tokens <= num_segments * budget + 8


def test_cli_writes_one_squad_file_per_length(tmp_path, babi_paths, xlnet_tokenizer_dir):
    main(["--babi_file", str(babi_paths["qa1"]), "--filler_file", str(babi_paths["filler"]), "--tokenizer_name",
          str(xlnet_tokenizer_dir), "--num_segments", "1", "2", "--max_examples", "5", "--output_dir", str(tmp_path)])
    for n in (1, 2):
        payload = json.loads((tmp_path / f"qa1_single-supporting-fact_test-{n}seg.json").read_text())
        assert payload["version"] == "v2.0" and len(payload["data"]) == 5


def test_skip_examples_gives_the_next_questions_of_the_file(babi_paths, xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    questions = read_babi(babi_paths["qa1"])
    evaluated = build_babilong(babi_paths["qa1"], babi_paths["filler"], tokenizer, 1, max_examples=5)
    held_out = build_babilong(babi_paths["qa1"], babi_paths["filler"], tokenizer, 1, max_examples=3, skip_examples=5)
    qas = [document["paragraphs"][0]["qas"][0] for document in held_out["data"]]
    assert [qa["question"] for qa in qas] == [item.question for item in questions[5:8]]
    assert [qa["answers"][0]["text"] for qa in qas] == [item.answer for item in questions[5:8]]
    evaluated_ids = {document["paragraphs"][0]["qas"][0]["id"] for document in evaluated["data"]}
    assert evaluated_ids.isdisjoint(qa["id"] for qa in qas)
    with pytest.raises(ValueError, match="skip_examples"):
        build_babilong(babi_paths["qa1"], babi_paths["filler"], tokenizer, 1, skip_examples=len(questions))


def test_bad_lengths_are_rejected(babi_paths, xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    with pytest.raises(ValueError, match="num_segments"):
        build_babilong(babi_paths["qa1"], babi_paths["filler"], tokenizer, 0)
    with pytest.raises(ValueError, match="max_seq_length"):
        build_babilong(babi_paths["qa1"], babi_paths["filler"], tokenizer, 1, max_seq_length=12, max_examples=3)


def test_entity_augmentation_renames_consistently_and_keeps_answers_exact(babi_paths, xlnet_tokenizer_dir):
    import random

    from hf_memory.data.babilong import PEOPLE, PLACES, rename_entities

    item = read_babi(babi_paths["qa2"])[5]
    renamed = rename_entities(item, random.Random(3))
    assert renamed.answer in PLACES and any(renamed.answer in renamed.story[i] for i in item.supporting_lines)
    # One-to-one: sentences that named the same person still do, and differently named ones still differ.
    subjects = [line.split()[0] for line in item.story]
    new_subjects = [line.split()[0] for line in renamed.story]
    assert all((a == b) == (c == d) for a, c in zip(subjects, new_subjects) for b, d in zip(subjects, new_subjects))
    assert set(new_subjects) <= set(PEOPLE)
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    payload = build_babilong(babi_paths["qa1"], babi_paths["filler"], tokenizer, 2, max_examples=30,
                             augment_entities=True)
    answers = {qa["answers"][0]["text"] for a in payload["data"] for qa in a["paragraphs"][0]["qas"]}
    assert len(answers) > 6  # more places than bAbI's six
    for article in payload["data"]:
        paragraph = article["paragraphs"][0]
        answer = paragraph["qas"][0]["answers"][0]
        start = answer["answer_start"]
        assert paragraph["context"][start : start + len(answer["text"])] == answer["text"]
