"""Run under `torch.distributed.run --nproc_per_node 2` by test_trainer.py: MemoryTrainer.training_step on a
DDP-wrapped model must leave every process with the mean over processes of the single-process reference gradients,
for every reading order, the global softmax and truncated BPTT (several forwards per backward), and gradient
accumulation. Prints `DDP OK <case>` per process and case."""

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from test_trainer import build_documents, make_trainer, reference_gradients

CASES = [  # reading_order, use_global_softmax, bptt_depth, micro-batches per process
    ("forward", False, 0, 1),
    ("forward", True, 1, 1),
    ("backward", False, 2, 1),
    ("bidirectional", False, 0, 1),
    ("bidirectional", True, 1, 1),
    ("bidirectional", True, 0, 2),
]


def check_case(documents, work_dir, reading_order, use_global_softmax, bptt_depth, micro_batches):
    trainer = make_trainer(  # its TrainingArguments join the process group torch.distributed.run set up
        documents, work_dir, bptt_depth=bptt_depth, use_global_softmax=use_global_softmax, reading_order=reading_order
    )
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dataset = documents[3]
    longest = np.argsort(dataset["num_segments"])[::-1].tolist()
    batches = [  # [process][micro-batch], two documents each, collated on process 0 and shared
        [trainer.data_collator([dataset[i] for i in longest[2 * k: 2 * k + 2]])
         for k in range(p * micro_batches, (p + 1) * micro_batches)]
        for p in range(world_size)
    ]
    shared = [batches]
    dist.broadcast_object_list(shared, src=0)
    batches = shared[0]
    model = trainer.model
    wrapped = trainer.accelerator.prepare(model)  # broadcasts process 0's weights
    expected = {}
    for process_batches in batches:
        for batch in process_batches:
            gradients, _ = reference_gradients(model, batch, bptt_depth, use_global_softmax, reading_order)
            for name, gradient in gradients.items():
                expected[name] = expected.get(name, 0) + gradient / (world_size * micro_batches)
    model.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = micro_batches
    for index, batch in enumerate(batches[rank]):
        # as the Trainer's loop does: every micro-batch but the last under no_sync
        last = index == micro_batches - 1
        with contextlib.nullcontext() if last else trainer.accelerator.no_sync(wrapped):
            trainer.training_step(wrapped, batch)
    got = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys(), sorted(set(got) ^ set(expected))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def main():
    work_dir = Path(sys.argv[1])
    tokenizer_dir = work_dir / f"tokenizer_{os.environ['RANK']}"
    tokenizer_dir.mkdir(parents=True)
    documents = build_documents(tokenizer_dir)  # weights, batches: process 0's
    for case in CASES:
        check_case(documents, work_dir / "out", *case)
        print(f"DDP OK {case}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
