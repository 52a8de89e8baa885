"""MemoryTrainer under bf16 autocast and gradient checkpointing (XLNet alone supports neither checkpointing)."""

import pytest
import torch

from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering
from hf_memory.data import SegmentCollator
from test_trainer import make_trainer, setup  # noqa: F401  (shared module fixture)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(setup):  # noqa: F811
    tokenizer, read_ids, write_ids, dataset = setup
    config = MemXLNetConfig(vocab_size=len(tokenizer), d_model=16, n_layer=2, n_head=2, d_inner=32, dropout=0.0,
                            memory_num_tokens=len(read_ids), mem_read_token_ids=read_ids, mem_write_token_ids=write_ids)
    torch.manual_seed(0)
    plain = MemXLNetForQuestionAnswering(config).train()
    checkpointed = MemXLNetForQuestionAnswering(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in checkpointed.transformer.layer)
    batch = SegmentCollator(tokenizer.pad_token_id, tokenizer.cls_token_id)([dataset[i] for i in range(4)])
    losses = []
    for model in (plain, checkpointed):
        memory = None
        loss = 0
        for step in range(batch["input_ids"].shape[1]):
            out = model(input_ids=batch["input_ids"][:, step], attention_mask=batch["attention_mask"][:, step],
                        memory_state=memory, segment_mask=batch["segment_mask"][:, step],
                        start_positions=batch["start_positions"][:, step], end_positions=batch["end_positions"][:, step])
            memory, loss = out.memory_state, loss + out.loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize("precision", [{"bf16": True}, {"activation_checkpointing": True}])
def test_trainer_trains_with_bf16_and_activation_checkpointing(setup, tmp_path, precision):  # noqa: F811
    trainer = make_trainer(setup, tmp_path, num_train_epochs=1, **precision)
    before = trainer.model.memory.initial_memory.detach().clone()
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, trainer.model.memory.initial_memory.detach())
