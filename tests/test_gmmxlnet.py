import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForQuestionAnswering

import hf_memory  # noqa: F401  (registers the Auto classes)
from hf_memory.models.memxlnet.configuration_memxlnet import (
    GMMXLNetConfig,
    gmm_balanced_config,
    gmm_large_config,
    gmm_small_config,
)
from hf_memory.models.memxlnet.modeling_gmmxlnet import (
    GMMXLNetForQuestionAnswering,
    entropy_loss,
    load_balance_loss,
)

TINY = dict(vocab_size=120, d_model=32, n_layer=2, n_head=4, d_inner=64, dropout=0.0)
LABELS = dict(start_positions=torch.tensor([5, 7]), end_positions=torch.tensor([6, 9]))


def make_model(seed=0, **gmm):
    torch.manual_seed(seed)
    options = {"memory_num_tokens": 3, "num_memory_experts": 4, **gmm}
    return GMMXLNetForQuestionAnswering(GMMXLNetConfig(**TINY, **options))


def segment(config, batch_size=2, length=24, seed=0):
    """Random tokens in the documented layout: READ tokens, context/question, WRITE tokens, <cls> last."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, TINY["vocab_size"], (batch_size, length), generator=generator)
    m = config.memory_num_tokens
    ids[:, :m] = torch.tensor(config.mem_read_token_ids)
    ids[:, -m - 1 : -1] = torch.tensor(config.mem_write_token_ids)
    ids[:, -1] = 3
    return ids


def reference_write(memory, state, written, written_mask):
    """The GMM update written per expert with a Python loop, as the guide states it."""
    experts, d = memory.expert_memories(state), memory.hidden_size
    probs = memory.write_router(written, written_mask)
    new_experts = []
    for j in range(memory.num_experts):
        joint = torch.cat([experts[:, j], written], dim=-1)
        weight = torch.cat([memory.state_weight[j], memory.written_weight[j]], dim=0)
        projected = joint @ weight + memory.update_bias[j]
        gate = probs[:, j, None, None] * torch.sigmoid(projected[..., :d])
        updated = gate * torch.tanh(projected[..., d:]) + (1 - gate) * experts[:, j]
        new_experts.append(torch.where(written_mask.unsqueeze(-1), updated, experts[:, j]))
    new_experts = torch.stack(new_experts, 1)
    read = sum(probs[:, j, None, None] * new_experts[:, j] for j in range(memory.num_experts))
    return torch.cat([new_experts, read.unsqueeze(1)], 1), probs


@pytest.mark.parametrize("routing_mode", ["write-based", "read-based"])
@pytest.mark.parametrize("pooling_method", ["mean", "max", "attention"])
def test_batched_expert_update_equals_per_expert_reference(routing_mode, pooling_method):
    model = make_model(routing_mode=routing_mode, pooling_method=pooling_method)
    memory = model.memory
    state = torch.randn(2, *memory.state_shape)
    written, read_states = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    new_state, outputs = memory.write(state, written, mask, read_states=read_states, read_mask=mask)
    expected, probs = reference_write(memory, state, written, mask)
    torch.testing.assert_close(outputs["routing_probs"], probs)
    if routing_mode == "read-based":
        read_probs = memory.read_router(read_states, mask)
        torch.testing.assert_close(outputs["read_routing_probs"], read_probs)
        expected[:, -1] = torch.einsum("bk,bkmd->bmd", read_probs, expected[:, :-1])
    torch.testing.assert_close(new_state, expected)
    torch.testing.assert_close(new_state[0, :4, 1], state[0, :4, 1])  # absent WRITE slot keeps every expert's value


def test_read_tokens_receive_the_routing_weighted_expert_mixture():
    model = make_model().eval()
    ids = segment(model.config)
    with torch.no_grad():
        first = model(input_ids=ids)
        experts = first.memory_state[:, :4]
        mixture = torch.einsum("bk,bkmd->bmd", first.routing_probs, experts)
        torch.testing.assert_close(model.memory.read(first.memory_state), mixture)
        embeds = model.transformer.word_embedding(ids)
        embeds[:, :3] = mixture
        manual = model.transformer(inputs_embeds=embeds, use_mems=False).last_hidden_state
        second = model(input_ids=ids, memory_state=first.memory_state, output_hidden_states=True)
    torch.testing.assert_close(second.hidden_states[-1], manual)


@pytest.mark.parametrize("pooling_method", ["mean", "max", "attention"])
def test_routing_depends_on_segment_content(pooling_method):
    model = make_model(pooling_method=pooling_method).eval()
    with torch.no_grad():
        first = model(input_ids=segment(model.config, seed=1)).routing_probs
        again = model(input_ids=segment(model.config, seed=1)).routing_probs
        other = model(input_ids=segment(model.config, seed=2)).routing_probs
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    torch.testing.assert_close(first.sum(-1), torch.ones(2))
    # A tiny random XLNet mixes little content into the WRITE states, so differences are small but far above noise.
    assert (first - other).abs().min() > 1e-7
    assert (first[0] - first[1]).abs().min() > 1e-7  # the two documents of one batch are routed differently
    ids = segment(model.config, seed=1)
    embeds = model.transformer.word_embedding(ids).detach().requires_grad_(True)
    probs = model(input_ids=ids, inputs_embeds=embeds).routing_probs
    (gradient,) = torch.autograd.grad(probs[:, 0].sum(), embeds)
    assert gradient[:, 3:-4].abs().min(-1).values.gt(0).all()  # every context token moves the routing


@pytest.mark.parametrize("routing_mode", ["write-based", "read-based"])
def test_segment_two_loss_reaches_segment_one_and_every_memory_parameter(routing_mode):
    model = make_model(routing_mode=routing_mode, pooling_method="attention")
    first_ids = segment(model.config, seed=1)
    first_embeds = model.transformer.word_embedding(first_ids).detach().requires_grad_(True)
    first = model(input_ids=first_ids, inputs_embeds=first_embeds)
    second = model(input_ids=segment(model.config, seed=2), memory_state=first.memory_state, **LABELS)
    span_only = second.loss - 0.01 * second.load_balance_loss  # gradients must come through the memory, not aux
    span_only.backward()
    assert first_embeds.grad[:, 3:-4].abs().sum() > 0  # segment-1 context reaches segment 2 only via memory
    for name, parameter in model.memory.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_changing_segment_one_changes_segment_two_logits():
    model = make_model().eval()
    second_ids = segment(model.config, seed=3)
    with torch.no_grad():
        logits = [
            model(input_ids=second_ids, memory_state=model(input_ids=segment(model.config, seed=s)).memory_state)
            .start_logits for s in (1, 2)
        ]
    assert not torch.allclose(*logits)


def test_auxiliary_losses_enter_the_loss_with_their_weights_and_have_gradients():
    weights = dict(load_balance_weight=0.3, entropy_regularization_weight=0.2)
    model, plain = make_model(**weights), make_model(load_balance_weight=0.0)
    ids = segment(model.config)
    out, base = model(input_ids=ids, **LABELS), plain(input_ids=ids, **LABELS)
    torch.testing.assert_close(out.aux_loss, 0.3 * out.load_balance_loss + 0.2 * out.entropy_loss)
    torch.testing.assert_close(out.loss, base.loss + out.aux_loss)
    assert 1.0 <= out.load_balance_loss.item() <= 4.0 and out.entropy_loss.item() >= 0
    for aux in (out.load_balance_loss, out.entropy_loss):
        router = model.memory.write_router.proj.weight
        (gradient,) = torch.autograd.grad(aux, router, retain_graph=True)
        assert gradient.abs().sum() > 0


def test_routing_losses_match_their_definitions_and_skip_inactive_rows():
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    mask = torch.tensor([True, True, False])
    # f = (1/2, 1/2, 0, 0), P = (0.4, 0.35, 0.15, 0.1) -> 4 * (0.2 + 0.175)
    torch.testing.assert_close(load_balance_loss(probs, mask), torch.tensor(1.5))
    torch.testing.assert_close(load_balance_loss(torch.full((3, 4), 0.25)), torch.tensor(1.0))
    torch.testing.assert_close(entropy_loss(torch.full((3, 4), 0.25)), torch.tensor(0.0), atol=1e-6, rtol=0)
    entropies = -(probs[:2] * probs[:2].log()).sum(-1)
    torch.testing.assert_close(entropy_loss(probs, mask), torch.log(torch.tensor(4.0)) - entropies.mean())
    no_rows = torch.tensor([False, False, False])
    assert load_balance_loss(probs, no_rows) == 0 and entropy_loss(probs, no_rows) == 0


def test_segment_mask_keeps_memory_of_ended_documents_and_drops_their_losses():
    model = make_model(load_balance_weight=0.5).eval()
    ids = segment(model.config)
    state = model(input_ids=ids).memory_state
    out = model(input_ids=ids, memory_state=state, segment_mask=torch.tensor([True, False]), **LABELS)
    torch.testing.assert_close(out.memory_state[1], state[1], rtol=0, atol=0)
    assert not torch.allclose(out.memory_state[0], state[0])
    only_first = model(input_ids=ids[:1], memory_state=state[:1], start_positions=LABELS["start_positions"][:1],
                       end_positions=LABELS["end_positions"][:1])
    torch.testing.assert_close(out.loss, only_first.loss)


def test_experts_hold_different_memories_after_training():
    # Identical zero initial memories: differences can only come from routing and the per-expert updates.
    model = make_model(expert_init_strategies=["zeros"] * 4, load_balance_weight=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    documents = [(segment(model.config, seed=2 * i), segment(model.config, seed=2 * i + 1)) for i in range(4)]
    for step in range(12):
        first_ids, second_ids = documents[step % len(documents)]
        first = model(input_ids=first_ids, **LABELS)
        second = model(input_ids=second_ids, memory_state=first.memory_state, **LABELS)
        optimizer.zero_grad()
        (first.loss + second.loss).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        state = model(input_ids=documents[0][0]).memory_state
        state = model(input_ids=documents[0][1], memory_state=state).memory_state
    for experts in state[:, :4].flatten(2):  # (k, m*d) per document
        cosine = torch.nn.functional.normalize(experts, dim=-1) @ torch.nn.functional.normalize(experts, dim=-1).T
        off_diagonal = ~torch.eye(4, dtype=torch.bool)
        assert cosine[off_diagonal].max() < 0.95, cosine
        assert torch.cdist(experts, experts)[off_diagonal].min() > 0.2 * experts.norm(dim=-1).mean()


def test_expert_init_strategies():
    config = GMMXLNetConfig(**{**TINY, "d_model": 64, "n_head": 4}, memory_num_tokens=4, num_memory_experts=4,
                            expert_init_strategies=["orthogonal", "orthogonal", "learned", "zeros"])
    torch.manual_seed(0)
    experts = GMMXLNetForQuestionAnswering(config).memory.initial_experts.detach()
    orthogonal = experts[:2].reshape(8, 64)
    gram = orthogonal @ orthogonal.T
    torch.testing.assert_close(gram, torch.diag(gram.diagonal()), atol=1e-5, rtol=0)  # mutually orthogonal slots
    assert experts[2].abs().sum() > 0 and 0.005 < experts[2].std() < 0.05
    assert experts[3].abs().sum() == 0


def test_save_load_round_trip_is_exact(tmp_path):
    model = make_model(routing_mode="read-based", pooling_method="attention",
                       expert_init_strategies=["orthogonal", "learned", "zeros", "learned"]).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "modeling_gmmxlnet.py").is_file()
    loaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GMMXLNetForQuestionAnswering)
    assert loaded.config.expert_init_strategies == ["orthogonal", "learned", "zeros", "learned"]
    ids = segment(model.config)
    with torch.no_grad():
        a, b = model(input_ids=ids), loaded(input_ids=ids)
        a2, b2 = model(input_ids=ids, memory_state=a.memory_state), loaded(input_ids=ids, memory_state=b.memory_state)
    for name in ("start_logits", "memory_state", "routing_probs", "read_routing_probs"):
        torch.testing.assert_close(getattr(a2, name), getattr(b2, name), rtol=0, atol=0)


def test_auto_config_resolves_gmmxlnet():
    config = AutoConfig.for_model("gmmxlnet", **TINY, memory_num_tokens=2, num_memory_experts=2)
    assert isinstance(config, GMMXLNetConfig)
    model = AutoModelForQuestionAnswering.from_config(config)
    assert isinstance(model, GMMXLNetForQuestionAnswering)
    assert model(input_ids=segment(config)).memory_state.shape == (2, 3, 2, 32)


def test_trust_remote_code_loads_without_hf_memory(tmp_path):
    model = make_model(routing_mode="read-based").eval()
    model.save_pretrained(tmp_path / "ckpt")
    ids = segment(model.config)
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        first = model(input_ids=ids)
        second = model(input_ids=ids, memory_state=first.memory_state)
    torch.save((second.start_logits, second.routing_probs), tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_memory"] = None
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # the parent's: same float reductions, same bits
        from transformers import AutoModelForQuestionAnswering
        model = AutoModelForQuestionAnswering.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        assert type(model).__name__ == "GMMXLNetForQuestionAnswering"
        ids = torch.load({str(tmp_path / "ids.pt")!r})
        with torch.no_grad():
            first = model(input_ids=ids)
            second = model(input_ids=ids, memory_state=first.memory_state)
        logits, routing = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(second.start_logits, logits) and torch.equal(second.routing_probs, routing)
        print("REMOTE_OK")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert "REMOTE_OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_memory_experts", 1, r"num_memory_experts must be an integer in \[2, 8\]"),
        ("num_memory_experts", 9, r"num_memory_experts must be an integer in \[2, 8\]"),
        ("routing_temperature", 0.0, "routing_temperature must be > 0"),
        ("routing_temperature", -1.0, "routing_temperature must be > 0"),
        ("routing_mode", "random", "routing_mode must be one of 'write-based', 'read-based'"),
        ("pooling_method", "sum", "pooling_method must be one of 'mean', 'max', 'attention'"),
        ("load_balance_weight", -0.1, "load_balance_weight must be >= 0"),
        ("entropy_regularization_weight", -1.0, "entropy_regularization_weight must be >= 0"),
        ("memory_num_tokens", 0, "memory_num_tokens must be > 0 for GMM memory"),
        ("memory_impl", "differentiable", "GMM memory is a standalone memory architecture"),
        ("expert_init_strategies", ["learned"] * 3, "expert_init_strategies must have num_memory_experts=4 entries"),
        ("expert_init_strategies", ["learned"] * 3 + ["uniform"], r"Unknown expert_init_strategies \['uniform'\]"),
    ],
)
def test_bad_config_values_raise_the_seed_messages(field, value, message):
    with pytest.raises(ValueError, match=message):
        GMMXLNetConfig(**{**TINY, "memory_num_tokens": 3, "num_memory_experts": 4, field: value})


def test_presets_and_defaults():
    assert [factory(**TINY).num_memory_experts for factory in (gmm_small_config, gmm_balanced_config,
                                                                gmm_large_config)] == [2, 4, 8]
    config = gmm_large_config(**TINY, routing_temperature=0.5, memory_num_tokens=4)
    assert config.routing_temperature == 0.5 and config.expert_init_strategies == ["learned"] * 8
    default = GMMXLNetConfig(**TINY)
    assert (default.memory_num_tokens, default.routing_mode, default.load_balance_weight) == (16, "write-based", 0.01)
    assert default.model_type == "gmmxlnet" and default.vocab_size == TINY["vocab_size"] + 32


@pytest.mark.parametrize("family", ["memxlnet", "gmmxlnet"])
def test_stock_trainer_predictions_are_the_span_logits_only(tmp_path, family):
    """`Trainer.predict` keeps only start/end logits (memory state, routing and losses are `keys_to_ignore_at_inference`),
    so the usual `start_logits, end_logits = predictions` post-processing works as for XLNet's QA heads."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering

    model = make_model() if family == "gmmxlnet" else MemXLNetForQuestionAnswering(
        MemXLNetConfig(**TINY, memory_num_tokens=3))
    ids = segment(model.config, batch_size=4)

    class Segments(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return {"input_ids": ids[index], "start_positions": torch.tensor(5), "end_positions": torch.tensor(6)}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True)
    predictions = Trainer(model=model, args=args).predict(Segments()).predictions
    assert len(predictions) == 2 and all(logits.shape == tuple(ids.shape) for logits in predictions)


def test_bidirectional_gmm_reads_backward_with_a_second_expert_memory():
    """The backward pass of reading_order="bidirectional" has its own k experts and routers: its routing losses
    train them, not the forward pass's."""
    model = make_model(reading_order="bidirectional")
    assert type(model.backward_memory) is type(model.memory)
    first = model(input_ids=segment(model.config, seed=1), use_backward_memory=True)
    second = model(input_ids=segment(model.config, seed=2), memory_state=first.memory_state,
                   use_backward_memory=True, **LABELS)
    assert second.routing_probs.shape == (2, 4) and second.aux_loss > 0
    second.loss.backward()
    assert model.backward_memory.write_router.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.memory.parameters())
