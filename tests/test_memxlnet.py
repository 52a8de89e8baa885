import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    XLNetConfig,
    XLNetForQuestionAnsweringSimple,
)

from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering, MemXLNetModel, add_memory_tokens

TINY = dict(vocab_size=120, d_model=32, n_layer=2, n_head=4, d_inner=64, dropout=0.0)
MEMORY_VARIANTS = [
    dict(memory_impl="token", memory_update="gated", memory_init="learned"),
    dict(memory_impl="token", memory_update="none", memory_init="zeros"),
    dict(memory_impl="differentiable", memory_slots=6, memory_num_heads=2),
    dict(memory_impl="token", memory_update="gated_replace", memory_init="learned"),
]


def make_model(memory_num_tokens=3, seed=0, **memory):
    torch.manual_seed(seed)
    return MemXLNetForQuestionAnswering(MemXLNetConfig(**TINY, memory_num_tokens=memory_num_tokens, **memory))


def segment(config, batch_size=2, length=24, seed=0):
    """Random tokens in the documented layout: READ tokens, context/question, WRITE tokens, <cls> last."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, TINY["vocab_size"], (batch_size, length), generator=generator)
    m = config.memory_num_tokens
    if m:
        ids[:, :m] = torch.tensor(config.mem_read_token_ids)
        ids[:, -m - 1 : -1] = torch.tensor(config.mem_write_token_ids)
    ids[:, -1] = 3
    return ids


def two_segment_loss(model, first_embeds=None, first_ids=None):
    config = model.config
    first_ids = segment(config, seed=1) if first_ids is None else first_ids
    second_ids = segment(config, seed=2)
    labels = dict(start_positions=torch.tensor([5, 7]), end_positions=torch.tensor([6, 9]))
    first = model(input_ids=first_ids, inputs_embeds=first_embeds)
    second = model(input_ids=second_ids, memory_state=first.memory_state, **labels)
    return second


@pytest.mark.parametrize("memory", MEMORY_VARIANTS, ids=lambda m: "-".join(map(str, m.values())))
def test_segment_two_loss_reaches_segment_one_inputs_and_memory_parameters(memory):
    model = make_model(**memory)
    first_ids = segment(model.config, seed=1)
    first_embeds = model.transformer.word_embedding(first_ids).detach().requires_grad_(True)
    two_segment_loss(model, first_embeds=first_embeds, first_ids=first_ids).loss.backward()
    # Non-memory positions of segment 1 influence segment 2 only through the memory.
    context_grad = first_embeds.grad[:, model.config.memory_num_tokens : -model.config.memory_num_tokens - 1]
    assert context_grad.abs().sum() > 0
    memory_grads = [p.grad for p in model.memory.parameters()]
    parameter_free = memory.get("memory_update") == "none" and memory.get("memory_init") == "zeros"
    assert parameter_free or memory_grads
    assert all(g is not None and g.abs().sum() > 0 for g in memory_grads)


@pytest.mark.parametrize("memory", MEMORY_VARIANTS, ids=lambda m: "-".join(map(str, m.values())))
def test_changing_segment_one_changes_segment_two_logits(memory):
    model = make_model(**memory).eval()
    with torch.no_grad():
        reference = two_segment_loss(model, first_ids=segment(model.config, seed=1)).start_logits
        changed = two_segment_loss(model, first_ids=segment(model.config, seed=5)).start_logits
    assert not torch.allclose(reference, changed)


def test_gated_replace_gate_moves_between_keeping_and_replacing_the_memory():
    model = make_model(memory_update="gated_replace").eval()
    memory = model.memory
    state, written = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    all_written = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        initial = memory.write(state, written, all_written)
        # At initialisation most of each write is taken: closer to the write-token states than to the old memory.
        assert (initial - written).norm() < (initial - state).norm()
        memory.gate_proj.weight.zero_()
        memory.gate_proj.bias.fill_(50.0)
        torch.testing.assert_close(memory.write(state, written, all_written), written)
        memory.gate_proj.bias.fill_(-50.0)
        torch.testing.assert_close(memory.write(state, written, all_written), state)


def test_without_memory_logits_equal_xlnet_question_answering_simple():
    model = make_model(memory_num_tokens=0).eval()
    reference = XLNetForQuestionAnsweringSimple(XLNetConfig(**TINY)).eval()
    assert reference.load_state_dict(model.state_dict(), strict=True)
    ids = segment(model.config)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        ours, theirs = model(input_ids=ids, attention_mask=mask), reference(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(ours.start_logits, theirs.start_logits, rtol=0, atol=0)
    torch.testing.assert_close(ours.end_logits, theirs.end_logits, rtol=0, atol=0)
    assert ours.memory_state is None


def test_segment_mask_keeps_memory_of_ended_documents_and_drops_their_loss():
    model = make_model().eval()
    ids = segment(model.config)
    state = model(input_ids=ids).memory_state
    labels = dict(start_positions=torch.tensor([5, 7]), end_positions=torch.tensor([6, 9]))
    out = model(input_ids=ids, memory_state=state, segment_mask=torch.tensor([True, False]), **labels)
    torch.testing.assert_close(out.memory_state[1], state[1])
    assert not torch.allclose(out.memory_state[0], state[0])
    only_first = model(input_ids=ids[:1], memory_state=state[:1], start_positions=labels["start_positions"][:1],
                       end_positions=labels["end_positions"][:1])
    torch.testing.assert_close(out.loss, only_first.loss)


@pytest.mark.parametrize("memory", MEMORY_VARIANTS, ids=lambda m: "-".join(map(str, m.values())))
def test_save_load_round_trip_is_exact_and_safetensors_only(tmp_path, memory):
    model = make_model(**memory).eval()
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MemXLNetForQuestionAnswering)
    ids = segment(model.config)
    with torch.no_grad():
        a, b = model(input_ids=ids), loaded(input_ids=ids)
        a2, b2 = model(input_ids=ids, memory_state=a.memory_state), loaded(input_ids=ids, memory_state=b.memory_state)
    torch.testing.assert_close(a2.start_logits, b2.start_logits, rtol=0, atol=0)
    torch.testing.assert_close(a2.memory_state, b2.memory_state, rtol=0, atol=0)


def test_auto_classes_resolve_memxlnet(tmp_path):
    config = AutoConfig.for_model("memxlnet", **TINY, memory_num_tokens=2)
    assert isinstance(config, MemXLNetConfig)
    encoder = AutoModel.from_config(config)
    assert isinstance(encoder, MemXLNetModel)
    out = encoder(input_ids=segment(config))
    assert out.last_hidden_state.shape == (2, 24, 32) and out.memory_state.shape == (2, 2, 32)


def test_trust_remote_code_loads_without_hf_memory(tmp_path):
    model = make_model().eval()
    model.save_pretrained(tmp_path / "ckpt")
    ids = segment(model.config)
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        first = model(input_ids=ids)
        expected = model(input_ids=ids, memory_state=first.memory_state).start_logits
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_memory"] = None
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # the parent's: same float reductions, same bits
        from transformers import AutoModel, AutoModelForQuestionAnswering
        model = AutoModelForQuestionAnswering.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        ids = torch.load({str(tmp_path / "ids.pt")!r})
        with torch.no_grad():
            first = model(input_ids=ids)
            logits = model(input_ids=ids, memory_state=first.memory_state).start_logits
        assert torch.equal(logits, torch.load({str(tmp_path / "expected.pt")!r}))
        encoder = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        assert type(encoder).__name__ == "MemXLNetModel"
        print("REMOTE_OK")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert "REMOTE_OK" in result.stdout, result.stderr[-3000:]


def test_from_pretrained_plain_xlnet_adds_memory(tmp_path, xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    torch.manual_seed(0)
    xlnet = XLNetForQuestionAnsweringSimple(XLNetConfig(**{**TINY, "vocab_size": len(tokenizer)})).eval()
    xlnet.save_pretrained(tmp_path / "xlnet")
    model = MemXLNetForQuestionAnswering.from_pretrained(tmp_path / "xlnet", memory_num_tokens=16)
    read_ids, write_ids = add_memory_tokens(tokenizer, 16)
    assert (model.config.mem_read_token_ids, model.config.mem_write_token_ids) == (read_ids, write_ids)
    assert model.transformer.word_embedding.weight.shape[0] == len(tokenizer) == model.config.vocab_size
    for name, tensor in xlnet.state_dict().items():
        if name != "transformer.word_embedding.weight":
            torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    torch.testing.assert_close(model.transformer.word_embedding.weight[: len(tokenizer) - 32],
                               xlnet.transformer.word_embedding.weight)
    assert model.memory.initial_memory.abs().sum() > 0
    encoded = tokenizer(" ".join(tokenizer.convert_ids_to_tokens(read_ids)) + " The Normans",
                        "Who? " + " ".join(tokenizer.convert_ids_to_tokens(write_ids)), return_tensors="pt")
    assert model(**encoded).memory_state.shape == (1, 16, 32)


def test_enable_memory_with_tokenizer_on_a_trained_no_memory_model(xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    model = MemXLNetForQuestionAnswering(MemXLNetConfig(**{**TINY, "vocab_size": len(tokenizer)}))
    model.enable_memory(4, tokenizer=tokenizer, memory_update="none")
    assert model.config.mem_read_token_ids == tokenizer.convert_tokens_to_ids([f"[MEM_READ_{i}]" for i in range(4)])
    assert model.config.memory_update == "none" and not hasattr(model.memory, "gate_proj")
    with pytest.raises(ValueError, match="already has memory_num_tokens=4"):
        model.enable_memory(2)


def test_bidirectional_reading_has_a_second_memory_of_its_own(tmp_path):
    """reading_order="bidirectional": `use_backward_memory=True` reads and writes a second memory, which alone gets
    that pass's gradients, is added by enable_memory, and round-trips through save/load exactly."""
    model = make_model(memory_update="gated_replace", reading_order="bidirectional")
    assert type(model.backward_memory) is type(model.memory)
    assert not torch.equal(model.backward_memory.initial_memory, model.memory.initial_memory)
    first_ids, second_ids = segment(model.config, seed=1), segment(model.config, seed=2)
    labels = dict(start_positions=torch.tensor([5, 7]), end_positions=torch.tensor([6, 9]))
    first = model(input_ids=first_ids, use_backward_memory=True)
    model(input_ids=second_ids, memory_state=first.memory_state, use_backward_memory=True, **labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backward_memory.parameters())
    assert all(p.grad is None for p in model.memory.parameters())
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        for backward in (False, True):
            a, b = (m(input_ids=first_ids, use_backward_memory=backward) for m in (model, loaded))
            a2 = model(input_ids=second_ids, memory_state=a.memory_state, use_backward_memory=backward)
            b2 = loaded(input_ids=second_ids, memory_state=b.memory_state, use_backward_memory=backward)
            torch.testing.assert_close(a2.start_logits, b2.start_logits, rtol=0, atol=0)
    no_memory = make_model(memory_num_tokens=0)
    no_memory.enable_memory(3, reading_order="bidirectional")
    assert no_memory.backward_memory is not None and no_memory.config.reading_order == "bidirectional"
    with pytest.raises(ValueError, match="needs the second memory of reading_order='bidirectional'"):
        make_model()(input_ids=first_ids, use_backward_memory=True)
    with pytest.raises(ValueError, match="memory_num_tokens=0 gives none"):
        MemXLNetConfig(**TINY, reading_order="bidirectional")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("memory_num_tokens", -1, "memory_num_tokens must be >= 0"),
        ("memory_init", "random", "Unknown memory_init='random'"),
        ("memory_update", "lstm", "Unknown memory_update='lstm'"),
        ("memory_impl", "ntm", "Unknown memory_impl='ntm'"),
        ("reading_order", "reverse", "Unknown reading_order='reverse'"),
        ("mem_read_token_ids", [1, 2], "mem_read_token_ids must list memory_num_tokens=3"),
    ],
)
def test_bad_config_values_name_the_field(field, value, message):
    kwargs = {**TINY, "memory_num_tokens": 3, field: value}
    if field == "mem_read_token_ids":
        kwargs["mem_write_token_ids"] = [4, 5, 6]
    with pytest.raises(ValueError, match=message):
        MemXLNetConfig(**kwargs)


def test_bad_forward_inputs_name_the_fix():
    model = make_model()
    ids = segment(model.config)
    with pytest.raises(ValueError, match=r"memory_state has shape \(2, 5, 32\), expected \(2, 3, 32\)"):
        model(input_ids=ids, memory_state=torch.zeros(2, 5, 32))
    plain = torch.randint(10, 100, (2, 12))
    with pytest.raises(ValueError, match="none of the \\[MEM_READ_i\\] token ids.*add_memory_tokens"):
        model(input_ids=plain)


def test_tokenizer_without_memory_tokens_is_rejected(xlnet_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlnet_tokenizer_dir)
    model = MemXLNetForQuestionAnswering(MemXLNetConfig(**{**TINY, "vocab_size": len(tokenizer) - 10}))
    with pytest.raises(ValueError, match="tokenizer has .* tokens but the model only"):
        model.enable_memory(2, tokenizer=tokenizer)


@pytest.mark.parametrize("xlnet_input", [dict(use_mems=True), dict(mems=[torch.zeros(4, 2, 32)]),
                                         dict(input_mask=torch.ones(2, 24))])
def test_xlnet_inputs_that_memxlnet_does_not_use_are_refused_not_ignored(xlnet_input):
    model = make_model()
    with pytest.raises(ValueError, match="memory_state"):
        model(input_ids=segment(model.config), **xlnet_input)
    with pytest.raises(ValueError, match=next(iter(xlnet_input))):
        MemXLNetModel(model.config)(input_ids=segment(model.config), **xlnet_input)


def test_from_pretrained_in_bfloat16_equals_casting_after_loading(tmp_path):
    """XLNet's attention parameters are built as torch.FloatTensor and stayed float32 under `dtype=torch.bfloat16`
    (then the first einsum failed); loaded in bf16 they now equal the float32 model cast with `.to`."""
    make_model().save_pretrained(tmp_path)
    loaded = MemXLNetForQuestionAnswering.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.bfloat16}
    cast = MemXLNetForQuestionAnswering.from_pretrained(tmp_path).to(torch.bfloat16).eval()
    ids = segment(loaded.config)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).start_logits, cast(input_ids=ids).start_logits)
