"""MemoryTransformer: config validation, causal routing, caching/generation, gradients, save/load, remote code."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from hf_memory.models.memory_transformer import (
    MemoryCache,
    MemoryTransformerCache,
    MemoryTransformerConfig,
    MemoryTransformerForCausalLM,
    MemoryTransformerForSequenceClassification,
    MemoryTransformerForTokenClassification,
    MemoryTransformerMemoryBlock,
    build_memory_bank,
    memory_router_statistics,
)
from hf_memory.models.memory_transformer.modeling_memory_transformer import MemoryAttentionFunction

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> MemoryTransformerConfig:
    fields = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_memory_tokens=64,
        use_chapters=True,
        num_chapters=8,
        top_k_chapters=2,
        num_shared_chapters=1,
        routing_chunk_size=4,
        zero_init_memory_output=False,
        pad_token_id=0,
    )
    fields.update(overrides)
    return MemoryTransformerConfig(**fields)


def tiny_model(**overrides) -> MemoryTransformerForCausalLM:
    torch.manual_seed(0)
    return MemoryTransformerForCausalLM(tiny_config(**overrides)).eval()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(top_k_chapters=8), "top_k_chapters"),
        (dict(num_memory_tokens=60), "num_memory_tokens"),
        (dict(memory_block_variant="C"), "memory_block_variant"),
        (dict(memory_bank_type="lowrank"), "memory_bank_type"),
        (dict(memory_layer_placement="custom", memory_layer_indices=[0, 5]), "memory_layer_indices"),
        (dict(memory_layer_placement="custom", memory_layer_indices=[1, 1]), "memory_layer_indices"),
        (dict(memory_layer_placement="all", memory_layer_indices=[0]), "memory_layer_indices"),
        (dict(memory_sharing="grouped"), "memory_sharing"),
        (dict(num_shared_chapters=8), "num_shared_chapters"),
        (dict(routing_chunk_size=0), "routing_chunk_size"),
        (dict(memory_bank_type="reduced_dim", memory_dim=16), "memory_rank"),
        (dict(tokens_per_chapter=8), "num_memory_tokens and num_chapters"),
        (dict(num_attention_heads=0), "num_attention_heads"),
        (dict(num_key_value_heads=0), "num_key_value_heads"),
        (dict(memory_num_attention_heads=0), "memory_num_attention_heads"),
        (dict(memory_dropout=1.5), "memory_dropout"),
        (dict(memory_init_std=-1.0), "memory_init_std"),
        (dict(router_aux_loss_coef=-1.0), "router_aux_loss_coef"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


@pytest.mark.parametrize("overrides", [dict(num_memory_tokens=16.5), dict(num_hidden_layers="2")])
def test_config_fields_are_type_checked_like_llamas(overrides):
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises(StrictDataclassFieldValidationError, match=next(iter(overrides))):
        tiny_config(**overrides)


def test_placement_and_sharing_resolution():
    config = tiny_config(num_hidden_layers=6, memory_layer_placement="every_n", memory_layer_n=2,
                         memory_sharing="every_k_layers", memory_sharing_k=2)
    assert config.get_memory_layer_indices() == [0, 2, 4]
    assert [config.get_memory_bank_index(i) for i in (0, 2, 4)] == [0, 0, 1]
    assert tiny_config(num_hidden_layers=6, memory_layer_placement="last_k", memory_layer_k=2).get_memory_layer_indices() == [4, 5]
    per_layer = MemoryTransformerForCausalLM(tiny_config(num_hidden_layers=3, memory_sharing="per_layer"))
    assert len(per_layer.model.memory_banks) == 3
    vanilla = MemoryTransformerForCausalLM(tiny_config(vanilla_mode=True))
    assert len(vanilla.model.memory_banks) == 0
    assert not any("memory" in name for name, _ in vanilla.named_parameters())


def test_zero_initialised_memory_is_an_exact_no_op():
    memory_model = tiny_model(zero_init_memory_output=True)
    vanilla = MemoryTransformerForCausalLM(tiny_config(vanilla_mode=True)).eval()
    missing = vanilla.load_state_dict(memory_model.state_dict(), strict=False)
    assert not missing.missing_keys
    input_ids = torch.randint(1, 97, (2, 9))
    assert torch.equal(memory_model(input_ids).logits, vanilla(input_ids).logits)


@pytest.mark.parametrize("bank_type", ["standard", "factorized", "reduced_dim"])
@pytest.mark.parametrize("variant", ["A", "B"])
def test_gradients_reach_memory_router_and_projections(bank_type, variant):
    model = tiny_model(memory_bank_type=bank_type, memory_rank=16, memory_block_variant=variant).train()
    input_ids = torch.randint(1, 97, (2, 10))
    model(input_ids, labels=input_ids).loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters() if "memory" in name or "router" in name}
    assert any("memory_banks" in name for name in grads)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name


def test_routing_never_sees_future_tokens():
    model = tiny_model()
    input_ids = torch.randint(1, 97, (2, 14))
    changed = input_ids.clone()
    changed[:, 9:] = torch.randint(1, 97, (2, 5))
    out, out_changed = model(input_ids), model(changed)
    assert torch.equal(out.logits[:, :9], out_changed.logits[:, :9])
    assert torch.equal(out.router_logits[1][:, :9], out_changed.router_logits[1][:, :9])
    assert not torch.equal(out.logits[:, 9:], out_changed.logits[:, 9:])


def test_padding_never_influences_real_tokens():
    model = tiny_model()
    input_ids = torch.randint(1, 97, (2, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :5] = 0
    repadded = input_ids.clone()
    repadded[0, :5] = torch.randint(1, 97, (5,))
    logits = model(input_ids, attention_mask=attention_mask).logits
    logits_repadded = model(repadded, attention_mask=attention_mask).logits
    assert torch.allclose(logits[0, 5:], logits_repadded[0, 5:], atol=1e-6)
    assert torch.equal(logits[1], logits_repadded[1])


def test_incremental_decoding_matches_full_forward():
    model = tiny_model()
    input_ids = torch.randint(1, 97, (2, 13))
    full = model(input_ids, use_cache=False).logits
    cache = MemoryTransformerCache(config=model.config)
    pieces = [model(input_ids[:, a:b], cache=cache).logits for a, b in ((0, 5), (5, 6), (6, 10), (10, 13))]
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)


@pytest.mark.parametrize("overrides", [dict(), dict(use_chapters=False), dict(vanilla_mode=True)])
def test_generate_with_cache_equals_generate_without(overrides):
    model = tiny_model(**overrides)
    prompt = torch.randint(1, 97, (1, 6))
    with_cache = model.generate(prompt, max_new_tokens=15, do_sample=False)
    without_cache = model.generate(prompt, max_new_tokens=15, do_sample=False, use_cache=False)
    assert with_cache.shape[1] == 21
    assert torch.equal(with_cache, without_cache)


@pytest.mark.parametrize("search", [dict(), dict(num_beams=3), dict(num_beams=2, num_return_sequences=2)],
                         ids=["greedy", "beams", "beams-returning-two"])
def test_batched_left_padded_generation_matches_no_cache(search):
    """Beam search reorders and repeats the rows: the routing state (per-row token counts included) follows."""
    model = tiny_model()
    input_ids = torch.randint(1, 97, (2, 7))
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :3], attention_mask[0, :3] = 0, 0
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=10, do_sample=False, pad_token_id=0, **search)
    assert torch.equal(model.generate(input_ids, **kwargs), model.generate(input_ids, use_cache=False, **kwargs))


def left_padded_batch(pads: list[int], length: int, vocab_size: int, seed: int = 1):
    """`(input_ids, attention_mask)` with `pads[b]` leading padding tokens in row b."""
    input_ids = torch.randint(1, vocab_size, (len(pads), length), generator=torch.Generator().manual_seed(seed))
    attention_mask = torch.ones_like(input_ids)
    for row, num_pads in enumerate(pads):
        input_ids[row, :num_pads], attention_mask[row, :num_pads] = 0, 0
    return input_ids, attention_mask


def test_left_padded_rows_are_routed_and_generated_as_alone():
    """Chunks count a row's real tokens, so left padding (any amount) leaves routing, logits and generated tokens
    exactly as for the row without padding, also through cached incremental calls that mix padding and tokens."""
    model = tiny_model()
    pads = [0, 3, 6]
    input_ids, attention_mask = left_padded_batch(pads, 11, 97)
    with torch.no_grad():
        batched = model(input_ids, attention_mask=attention_mask)
        generated = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False,
                                   eos_token_id=None)
        for row, num_pads in enumerate(pads):
            alone = model(input_ids[row : row + 1, num_pads:], output_router_logits=True)
            torch.testing.assert_close(batched.logits[row, num_pads:], alone.logits[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(batched.router_logits[0][row, num_pads:], alone.router_logits[0][0])
            alone_generated = model.generate(input_ids[row : row + 1, num_pads:], max_new_tokens=12, do_sample=False,
                                             eos_token_id=None)
            assert torch.equal(generated[row, 11:], alone_generated[0, 11 - num_pads :])
        sequence = torch.cat([input_ids, torch.randint(1, 97, (3, 9))], 1)
        mask = torch.cat([attention_mask, torch.ones(3, 9, dtype=attention_mask.dtype)], 1)
        full = model(sequence, attention_mask=mask).logits
        cache = MemoryTransformerCache(config=model.config)
        pieces = [model(sequence[:, a:b], attention_mask=mask[:, :b], cache=cache).logits
                  for a, b in ((0, 5), (5, 11), (11, 12), (12, 17), (17, 20))]
    real = mask.bool()
    torch.testing.assert_close(torch.cat(pieces, 1)[real], full[real], rtol=0, atol=1e-5)


def test_llama_call_conventions_past_key_values_return_dict_and_logits_to_keep():
    """What Llama accepts: the deprecated `past_key_values` name of `cache` (ignoring it silently gave wrong logits),
    `return_dict=False` in the call or the config, and a boolean `(batch, seq_len)` `logits_to_keep`."""
    model = tiny_model()
    input_ids = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(input_ids)
        prefix = model(input_ids[:, :5], use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            step = model(input_ids[:, 5:6], past_key_values=prefix.cache)
        torch.testing.assert_close(step.logits[:, -1], full.logits[:, 5], rtol=0, atol=1e-5)
        expected = model(input_ids, labels=input_ids).to_tuple()  # loss, aux_loss, logits, cache (Mixtral's order)
        as_tuple = model(input_ids, labels=input_ids, return_dict=False)
        assert isinstance(as_tuple, tuple) and all(map(torch.equal, as_tuple[:3], expected[:3]))
        model.config.return_dict = False
        as_tuple = model(input_ids, labels=input_ids)
        assert isinstance(as_tuple, tuple) and all(map(torch.equal, as_tuple[:3], expected[:3]))
        model.config.return_dict = True
        keep = torch.zeros(2, 9, dtype=torch.bool)
        keep[0, -3:], keep[1, 2] = True, True
        assert torch.equal(model(input_ids, logits_to_keep=keep).logits, full.logits[keep])


def test_eager_sdpa_and_flex_attention_agree_on_a_left_padded_batch():
    """(Decoding under flex attention on CPU hits a torch inductor compile error that LlamaForCausalLM shares, so
    generation is compared for eager and SDPA only.)"""
    model = tiny_model()
    input_ids, attention_mask = left_padded_batch([0, 3], 9, 97)
    logits, tokens = {}, {}
    with torch.no_grad():
        for implementation in ("eager", "sdpa", "flex_attention"):
            model.set_attn_implementation(implementation)
            logits[implementation] = model(input_ids, attention_mask=attention_mask).logits.masked_fill(
                attention_mask[..., None] == 0, 0.0)
            if implementation != "flex_attention":
                tokens[implementation] = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=5,
                                                        do_sample=False)
    for implementation in ("sdpa", "flex_attention"):
        torch.testing.assert_close(logits[implementation], logits["eager"], rtol=0, atol=1e-5)
    assert torch.equal(tokens["sdpa"], tokens["eager"])


def test_caches_other_than_memory_transformer_cache_work_without_chapters_only():
    """Without chapters the memory needs no per-row state, so static and plain dynamic caches give the same greedy
    tokens; with chapters the routing state must follow the cache, and another cache is refused with the fix."""
    from transformers import DynamicCache

    input_ids = torch.randint(1, 97, (2, 6), generator=torch.Generator().manual_seed(2))
    kwargs = dict(max_new_tokens=8, do_sample=False)
    model = tiny_model(use_chapters=False)
    expected = model.generate(input_ids, use_cache=False, **kwargs)
    assert torch.equal(model.generate(input_ids, cache_implementation="static", **kwargs), expected)
    assert torch.equal(model.generate(input_ids, cache=DynamicCache(config=model.config), **kwargs), expected)
    with pytest.raises(ValueError, match="StaticCache.*cache_implementation"):
        tiny_model().generate(input_ids, cache_implementation="static", **kwargs)


def test_generate_from_inputs_embeds_and_output_attentions():
    """What a transformers user calls on any causal LM: `generate(inputs_embeds=...)` continues like
    `generate(input_ids)`, and `output_attentions=True` (eager attention) returns one map per layer."""
    model = tiny_model()
    input_ids, attention_mask = left_padded_batch([0, 2], 9, 97)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=6, do_sample=False, eos_token_id=None)
    from_ids = model.generate(input_ids, **kwargs)
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(input_ids), **kwargs)
    assert torch.equal(from_embeds, from_ids[:, input_ids.shape[1] :])
    model.set_attn_implementation("eager")
    outputs = model(input_ids, attention_mask=attention_mask, output_attentions=True)
    assert len(outputs.attentions) == model.config.num_hidden_layers
    assert outputs.attentions[0].shape == (2, model.config.num_attention_heads, 9, 9)
    assert outputs.attentions[0][1, :, 2:, :2].abs().max() == 0  # no real token attends to padding


def assert_head_trains_memory_and_round_trips(model, auto_class, batch, labels, logits, tmp_path):
    """A task head: its loss trains the banks and the router, and the Auto class reloads it exactly."""
    input_ids, attention_mask = batch
    model.train()
    model(input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.memory_banks.parameters())
    assert model.model.layers[0].memory_block.router.gate.weight.grad.abs().sum() > 0
    model.eval().save_pretrained(tmp_path)
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids, attention_mask=attention_mask).logits, logits, rtol=0, atol=0)
    assert f"pipeline_tag: {model.card_pipeline_tag}" in (tmp_path / "README.md").read_text()


def test_sequence_classification_head_pools_the_last_real_token_and_trains_the_memory(tmp_path):
    torch.manual_seed(0)
    model = MemoryTransformerForSequenceClassification(tiny_config(num_labels=3)).eval()
    pads = [0, 3, 6]
    batch = left_padded_batch(pads, 11, 97)
    with torch.no_grad():
        scores = model(batch[0], attention_mask=batch[1]).logits
        alone = torch.cat([model(batch[0][row : row + 1, num_pads:]).logits for row, num_pads in enumerate(pads)])
    assert scores.shape == (3, 3)
    torch.testing.assert_close(scores, alone, rtol=0, atol=1e-5)
    assert_head_trains_memory_and_round_trips(model, AutoModelForSequenceClassification, batch, torch.tensor([0, 2, 1]),
                                              scores, tmp_path)


def test_token_classification_head_labels_each_real_token_as_alone_and_trains_the_memory(tmp_path):
    torch.manual_seed(0)
    model = MemoryTransformerForTokenClassification(tiny_config(num_labels=5)).eval()
    pads = [0, 3, 6]
    input_ids, attention_mask = batch = left_padded_batch(pads, 11, 97)
    with torch.no_grad():
        logits = model(input_ids, attention_mask=attention_mask).logits
        for row, num_pads in enumerate(pads):
            alone = model(input_ids[row : row + 1, num_pads:]).logits[0]
            torch.testing.assert_close(logits[row, num_pads:], alone, rtol=0, atol=1e-5)
        labels = torch.randint(0, 5, input_ids.shape).masked_fill(attention_mask == 0, -100)
        loss = model(input_ids, attention_mask=attention_mask, labels=labels).loss
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected)  # padding labelled -100 is ignored
    assert model.dropout.p == 0.1  # Llama's default without config.classifier_dropout
    assert_head_trains_memory_and_round_trips(model, AutoModelForTokenClassification, batch, labels, logits, tmp_path)


def test_memory_is_projected_once_per_generation():
    model = tiny_model()
    calls = []
    for layer in model.model.layers:
        layer.memory_block.memory_key.register_forward_hook(lambda *args: calls.append(1))
    model.generate(torch.randint(1, 97, (1, 5)), max_new_tokens=8, do_sample=False)
    assert len(calls) == model.config.num_hidden_layers
    calls.clear()
    model(torch.randint(1, 97, (1, 5)), use_cache=False)
    assert len(calls) == model.config.num_hidden_layers


def test_cached_decoding_routes_once_per_chunk():
    model = tiny_model()
    routed = []
    for layer in model.model.layers:
        layer.memory_block.router.register_forward_hook(lambda *args: routed.append(1))
    prompt_len, new_tokens, chunk = 3, 8, model.config.routing_chunk_size  # the prompt fills part of one chunk
    model.generate(torch.randint(1, 97, (1, prompt_len)), max_new_tokens=new_tokens, do_sample=False)
    decoded_positions = range(prompt_len, prompt_len + new_tokens - 1)
    chunk_starts = sum(1 for position in decoded_positions if position % chunk == 0)
    assert len(routed) == model.config.num_hidden_layers * (1 + chunk_starts)


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    input_ids = torch.randint(1, 97, (2, 11))
    results = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = model(input_ids, labels=input_ids).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), name


def test_load_balance_loss_is_one_when_balanced_and_trains_the_router():
    num_chapters, top_k = 8, 2
    balanced = torch.eye(num_chapters).repeat(1, 4, 1) * 5.0  # every chapter picked equally often
    stats = memory_router_statistics((balanced,), top_k)
    assert torch.allclose(stats["chapter_fraction"].sum(-1), torch.ones(1))
    collapsed = torch.zeros(1, 8, num_chapters)
    collapsed[..., :top_k] = 10.0
    collapsed.requires_grad_(True)
    collapsed_stats = memory_router_statistics((collapsed,), top_k)
    assert collapsed_stats["load_balance_loss"] > 3.5  # near C/k = 4 when collapsed
    assert 0.9 < memory_router_statistics((torch.zeros(1, 8, num_chapters),), top_k)["load_balance_loss"] <= 1.01
    collapsed_stats["load_balance_loss"].backward()
    assert collapsed.grad.abs().sum() > 0
    model = tiny_model().train()
    input_ids = torch.randint(1, 97, (2, 10))
    out = model(input_ids, labels=input_ids)
    model.eval()
    out_eval = model(input_ids, labels=input_ids)
    assert torch.allclose(out.loss - out.aux_loss, out_eval.loss, atol=1e-6)


def test_memory_attention_backward_matches_finite_differences():
    """The hand-written backward of the training-time memory attention (router bias, dropout) is exact."""
    torch.manual_seed(0)
    query, keys, values = (torch.randn(2, n, 4, dtype=torch.float64, requires_grad=True) for n in (3, 5, 5))
    bias = torch.randn(2, 1, 5, dtype=torch.float64, requires_grad=True)

    def attend(*tensors, dropout=0.0):
        torch.manual_seed(1)  # the same dropout mask in every evaluation
        return MemoryAttentionFunction.apply(*tensors, 0.5, dropout)

    assert torch.autograd.gradcheck(attend, (query, keys, values, bias))
    assert torch.autograd.gradcheck(lambda *tensors: attend(*tensors, dropout=0.3), (query, keys, values, bias))
    assert torch.autograd.gradcheck(lambda *tensors: attend(*tensors, None), (query, keys, values))


def test_cached_inference_projection_follows_dtype_changes():
    model = tiny_model()
    input_ids = torch.randint(1, 97, (1, 6))
    with torch.no_grad():
        model(input_ids)  # caches the projected memory in float32
        logits = model.double()(input_ids).logits
    assert logits.dtype == torch.float64


def test_memory_block_standalone_for_adapters():
    config = MemoryTransformerConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                                     num_memory_tokens=32, use_chapters=True, num_chapters=4, top_k_chapters=2)
    bank = build_memory_bank(config)
    block = MemoryTransformerMemoryBlock(config, layer_idx=3)
    hidden = torch.randn(2, 7, 48, requires_grad=True)
    delta, router_logits = block(hidden, bank, attention_mask=torch.ones(2, 7))
    assert torch.equal(delta, torch.zeros_like(delta))
    assert router_logits.shape == (2, 7, 4)
    delta.sum().backward()
    assert block.memory_output.weight.grad.abs().sum() > 0
    cache = MemoryCache()
    with torch.no_grad():
        block.memory_output.weight.normal_()
        full, _ = block(hidden, bank)
        steps = [block(hidden[:, i : i + 1], bank, memory_cache=cache)[0] for i in range(7)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert set(cache.key_values) == {3}


def test_save_load_round_trip_and_auto_map(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_memory_transformer.MemoryTransformerConfig",
        "AutoModel": "modeling_memory_transformer.MemoryTransformerModel",
        "AutoModelForCausalLM": "modeling_memory_transformer.MemoryTransformerForCausalLM",
    }
    assert (tmp_path / "modeling_memory_transformer.py").is_file()
    assert (tmp_path / "configuration_memory_transformer.py").is_file()
    reloaded = MemoryTransformerForCausalLM.from_pretrained(tmp_path).eval()
    input_ids = torch.randint(1, 97, (2, 9))
    assert torch.equal(model(input_ids).logits, reloaded(input_ids).logits)


def test_trust_remote_code_loading_without_hf_memory(tmp_path):
    model = tiny_model()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    torch.manual_seed(0)
    classifier = MemoryTransformerForSequenceClassification(tiny_config(num_labels=3)).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    tagger = MemoryTransformerForTokenClassification(tiny_config(num_labels=4)).eval()
    tagger.save_pretrained(tmp_path / "tagger")
    input_ids = torch.randint(1, 97, (2, 9))
    torch.save({"input_ids": input_ids, "logits": model(input_ids).logits, "scores": classifier(input_ids).logits,
                "tags": tagger(input_ids).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_memory"] = None
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # the parent's: same float reductions, same bits
        from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                                  AutoModelForTokenClassification)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert torch.equal(model(expected["input_ids"]).logits, expected["logits"])
        base = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert type(base).__name__ == "MemoryTransformerModel"
        classifier = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "classifier")!r},
                                                                        trust_remote_code=True).eval()
        assert torch.equal(classifier(expected["input_ids"]).logits, expected["scores"])
        tagger = AutoModelForTokenClassification.from_pretrained({str(tmp_path / "tagger")!r},
                                                                 trust_remote_code=True).eval()
        assert torch.equal(tagger(expected["input_ids"]).logits, expected["tags"])
        print("REMOTE_OK")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert "REMOTE_OK" in result.stdout, result.stderr[-3000:]


def test_text_generation_pipeline_from_remote_code_batches_left_padded_prompts(tmp_path):
    """`pipeline("text-generation", trust_remote_code=True)` in a process without hf_memory; prompts of different
    lengths batched with left padding give what each prompt gives alone. The classification heads' card snippets
    (`pipeline("text-classification", ...)`, `pipeline("token-classification", ...)`) work the same way."""
    from hf_memory.tokenization import train_causal_lm_tokenizer

    texts = ["Once upon a time there was a little cat.", "The dog ran to the park and played all day."] * 20
    tokenizer = train_causal_lm_tokenizer([], vocab_size=300, texts=texts)
    token_ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = tiny_model(**token_ids)
    checkpoint, classifier_checkpoint = tmp_path / "checkpoint", tmp_path / "classifier"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    torch.manual_seed(0)
    classifier = MemoryTransformerForSequenceClassification(tiny_config(num_labels=2, **token_ids))
    classifier.save_pretrained(classifier_checkpoint)
    tokenizer.save_pretrained(classifier_checkpoint)
    card = (classifier_checkpoint / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and 'pipeline("text-classification"' in card
    tagger_checkpoint = tmp_path / "tagger"
    MemoryTransformerForTokenClassification(tiny_config(num_labels=3, **token_ids)).save_pretrained(tagger_checkpoint)
    tokenizer.save_pretrained(tagger_checkpoint)
    assert 'pipeline("token-classification"' in (tagger_checkpoint / "README.md").read_text()
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_memory"] = None
        from transformers import pipeline
        generator = pipeline("text-generation", model={str(checkpoint)!r}, trust_remote_code=True, device=-1)
        generator.tokenizer.padding_side = "left"
        prompts = ["Once upon a time there", "The dog"]
        kwargs = dict(max_new_tokens=10, do_sample=False)
        batched = [out[0]["generated_text"] for out in generator(prompts, batch_size=2, **kwargs)]
        alone = [generator(prompt, **kwargs)[0]["generated_text"] for prompt in prompts]
        assert batched == alone, (batched, alone)
        classify = pipeline("text-classification", model={str(classifier_checkpoint)!r}, trust_remote_code=True,
                            device=-1)
        labels = classify(prompts, batch_size=2)
        assert [label["label"] for label in labels] == [classify(prompt)[0]["label"] for prompt in prompts]
        tag = pipeline("token-classification", model={str(tagger_checkpoint)!r}, trust_remote_code=True, device=-1)
        tags = tag(prompts[0])
        assert tags and all(entity["entity"].startswith("LABEL_") for entity in tags), tags
        print("PIPELINE_OK")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert "PIPELINE_OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("use_chapters", [False, True])
def test_batched_rows_equal_rows_run_alone(use_chapters):
    """Rows of a batch never mix: each row's logits equal the row run alone (trained-like, non-zero memory output)."""
    model = tiny_model(use_chapters=use_chapters).eval()
    input_ids = torch.randint(1, 97, (3, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched = model(input_ids).logits
        alone = torch.cat([model(row.unsqueeze(0)).logits for row in input_ids])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
