"""MemoryTrainer: gradients equal a hand-written reference (full and truncated BPTT, global softmax, every reading
order; also under 2-process DDP), gradient accumulation, and resume_from_checkpoint reproducing an uninterrupted run
exactly."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from hf_memory.data import SegmentCollator
from hf_memory.models.memxlnet.qa_processing_memxlnet import prepare_qa_features
from hf_memory.training import MemoryTrainer, ProgressiveSegmentsCallback, global_softmax_loss, per_segment_loss
from qa_fixtures import WORDS, tiny_model, tiny_tokenizer

SEQ_LEN = 32


def build_documents(directory):
    """A tiny tokenizer with memory tokens and 12 documents of 1 to 3+ segments, a third unanswerable."""
    tokenizer, read_ids, write_ids = tiny_tokenizer(directory)
    rng = np.random.default_rng(0)
    questions, contexts, answers = [], [], []
    for i in range(12):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 30))))
        context = " ".join(words)
        answer_word = int(rng.integers(len(words)))
        start = len(" ".join(words[:answer_word])) + (1 if answer_word else 0)
        questions.append("which " + words[answer_word] + "?")
        contexts.append(context)
        answerable = i % 3 != 0
        answers.append({"text": [words[answer_word]] if answerable else [], "answer_start": [start] if answerable else []})
    rows = prepare_qa_features(
        tokenizer, questions, contexts, answers, max_seq_length=SEQ_LEN, doc_stride=4, max_query_length=8,
        memory_read_ids=read_ids, memory_write_ids=write_ids,
    )
    rows["example_id"] = [str(i) for i in range(len(questions))]
    dataset = datasets.Dataset.from_dict(rows)
    assert max(rows["num_segments"]) >= 3 and min(rows["num_segments"]) == 1
    return tokenizer, read_ids, write_ids, dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_documents(tmp_path_factory.mktemp("tok"))


def make_trainer(setup, output_dir, **overrides):
    tokenizer, read_ids, write_ids, dataset = setup
    options = {
        "per_device_train_batch_size": 2, "num_train_epochs": 2, "learning_rate": 1e-2, "report_to": "none",
        "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "seed": 7, "use_cpu": True,
    }
    trainer_options = {key: overrides.pop(key) for key in ("bptt_depth", "use_global_softmax") if key in overrides}
    reading_order = overrides.pop("reading_order", "forward")
    options.update(overrides)
    model = tiny_model(tokenizer, read_ids, write_ids, reading_order=reading_order)
    return MemoryTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(output_dir), **options),
        train_dataset=dataset,
        data_collator=SegmentCollator(tokenizer.pad_token_id, tokenizer.cls_token_id, reading_order=reading_order),
        **trainer_options,
    )


READING_PASSES = {  # (segment order, use_backward_memory) of each pass, written out independently of the package
    "forward": [(False, False)],
    "backward": [(True, False)],
    "bidirectional": [(True, True), (False, False)],
}


def reference_gradients(model, batch, bptt_depth, use_global_softmax, reading_order="forward"):
    """Hand-written loop: loss over the document read in `reading_order` (bidirectional: a backward pass with the
    second memory, then a forward pass, each with its own loss), memory detached every `bptt_depth` segments read."""
    model.zero_grad()
    num_steps = batch["input_ids"].shape[1]
    loss = 0
    for reverse, use_backward_memory in READING_PASSES[reading_order]:
        memory, starts, ends = None, [None] * num_steps, [None] * num_steps
        order = range(num_steps - 1, -1, -1) if reverse else range(num_steps)
        for read, step in enumerate(order):
            if bptt_depth and read and read % bptt_depth == 0:
                memory = memory.detach()
            out = model(
                input_ids=batch["input_ids"][:, step], attention_mask=batch["attention_mask"][:, step],
                token_type_ids=batch["token_type_ids"][:, step], memory_state=memory,
                segment_mask=batch["segment_mask"][:, step], use_backward_memory=use_backward_memory,
            )
            memory = out.memory_state
            starts[step], ends[step] = out.start_logits, out.end_logits
        start, end = torch.stack(starts, 1), torch.stack(ends, 1)
        if use_global_softmax:
            loss = loss + global_softmax_loss(
                start, end, batch["global_start_positions"], batch["global_end_positions"], batch["segment_mask"]
            )
        else:
            loss = loss + per_segment_loss(
                start, end, batch["start_positions"], batch["end_positions"], batch["segment_mask"],
                batch["segment_mask"].sum(-1),
            )
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, loss.detach()


@pytest.mark.parametrize(
    "bptt_depth,use_global_softmax,reading_order",
    [(0, False, "forward"), (1, False, "forward"), (2, False, "forward"), (0, True, "forward"), (1, True, "forward"),
     (0, False, "backward"), (2, False, "backward"), (0, True, "backward"), (2, True, "backward"),
     (0, False, "bidirectional"), (2, False, "bidirectional"), (0, True, "bidirectional"), (2, True, "bidirectional")],
)
def test_training_step_gradients_match_reference(setup, tmp_path, bptt_depth, use_global_softmax, reading_order):
    trainer = make_trainer(
        setup, tmp_path, bptt_depth=bptt_depth, use_global_softmax=use_global_softmax, reading_order=reading_order
    )
    dataset = setup[3]
    order = np.argsort(dataset["num_segments"])[::-1][:3].tolist()  # the longest documents
    batch = trainer.data_collator([dataset[i] for i in order])
    assert batch["input_ids"].shape[1] >= 3 and len(set(batch["segment_mask"].sum(-1).tolist())) > 1
    model = trainer.model
    expected, expected_loss = reference_gradients(model, batch, bptt_depth, use_global_softmax, reading_order)
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    loss = trainer.training_step(model, batch)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    got = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # the learned initial memory gets gradient only through segments it reaches; so does the backward pass's own
    assert model.memory.initial_memory.grad.abs().sum() > 0
    if reading_order == "bidirectional":
        assert model.backward_memory.initial_memory.grad.abs().sum() > 0


def test_truncation_changes_the_memory_gradient(setup, tmp_path):
    dataset = setup[3]
    order = np.argsort(dataset["num_segments"])[::-1][:2].tolist()
    grads = {}
    for depth in (0, 1):
        trainer = make_trainer(setup, tmp_path, bptt_depth=depth)
        batch = trainer.data_collator([dataset[i] for i in order])
        trainer.model.zero_grad()
        trainer.current_gradient_accumulation_steps = 1
        trainer.training_step(trainer.model, batch)
        grads[depth] = trainer.model.memory.initial_memory.grad.clone()
    assert not torch.allclose(grads[0], grads[1])


def final_weights(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def test_gradient_accumulation_matches_a_large_batch(setup, tmp_path):
    # SGD: Adam's first steps are ~lr*sign(grad) and would amplify float summation-order noise
    small = make_trainer(setup, tmp_path / "ga", per_device_train_batch_size=6, gradient_accumulation_steps=2,
                         optim="sgd")
    large = make_trainer(setup, tmp_path / "big", per_device_train_batch_size=12, optim="sgd")
    small.train()
    large.train()
    assert small.state.global_step == large.state.global_step == 2
    a, b = final_weights(small), final_weights(large)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_resume_from_checkpoint_reproduces_uninterrupted_run(setup, tmp_path):
    def run(output_dir, resume=None, save=False):
        trainer = make_trainer(
            setup, output_dir, num_train_epochs=3, save_strategy="steps" if save else "no", save_steps=4,
            bptt_depth=2,
        )
        trainer.add_callback(ProgressiveSegmentsCallback(trainer, [1, 2, 3]))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full", save=True)
    checkpoint = tmp_path / "full" / "checkpoint-4"  # mid epoch 1 (6 steps per epoch)
    assert checkpoint.is_dir()
    resumed = run(tmp_path / "resumed", resume=str(checkpoint))
    assert resumed.state.global_step == full.state.global_step == 18
    assert resumed.data_collator.max_segments == 3
    a, b = final_weights(full), final_weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_warmup_schedules_are_pure_functions_of_the_epoch(setup, tmp_path):
    from transformers import TrainerControl, TrainerState

    from hf_memory.training import FreezeBaseWarmupCallback, GlobalSoftmaxWarmupCallback

    trainer = make_trainer(setup, tmp_path, use_global_softmax=True)
    freeze = FreezeBaseWarmupCallback(trainer.model, epochs=1)
    softmax = GlobalSoftmaxWarmupCallback(trainer, epochs=2)
    progressive = ProgressiveSegmentsCallback(trainer, [1, 3])
    observed = []
    for epoch in (0.0, 1.4, 2.0, 0.5):  # 0.5: a resume puts the schedules back
        state, control = TrainerState(epoch=epoch), TrainerControl()
        for callback in (freeze, softmax, progressive):
            callback.on_epoch_begin(trainer.args, state, control)
        observed.append((
            trainer.model.transformer.word_embedding.weight.requires_grad,
            trainer.model.memory.initial_memory.requires_grad,
            trainer.global_softmax_active,
            trainer.data_collator.max_segments,
        ))
    assert observed == [(False, True, False, 1), (True, True, False, 3), (True, True, True, 3), (False, True, False, 1)]


def test_ddp_gradients_are_the_mean_of_the_processes_reference_gradients(tmp_path):
    """Several forwards per backward (a document's segments, both passes) under DDP: see ddp_trainer_worker.py."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tests_dir = Path(__file__).parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(tests_dir.parent), str(tests_dir)])}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         str(tests_dir / "ddp_trainer_worker.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    from ddp_trainer_worker import CASES

    assert result.stdout.count("DDP OK") == 2 * len(CASES)
