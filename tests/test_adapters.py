"""Memory adapters on tiny random Llama / Qwen2 / Mistral models."""

import copy
import json
import os

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from hf_memory.adapters import MemoryAdapterConfig, MemoryAdapterModel, find_decoder_layers, get_memory_model


os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}
CHAPTERS = dict(num_memory_tokens=32, use_chapters=True, num_chapters=4, top_k_chapters=2, routing_chunk_size=4)


def tiny_model(architecture: str = "llama", seed: int = 0):
    config_class, model_class = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    return model_class(config_class(**TINY)).eval()


def input_ids(batch: int = 2, length: int = 11, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


class LanguageModelingRows(torch.utils.data.Dataset):
    """`size` random token rows, each its own labels, for Trainer runs."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        ids = input_ids(batch=1, length=12, seed=index)[0]
        return {"input_ids": ids, "labels": ids}


def train_memory_outputs(model: MemoryAdapterModel, std: float = 0.3) -> None:
    """Give every memory output projection non-zero weights, as training would."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.base_model.named_parameters():
            if "memory_output" in name or "lora_B" in name:
                parameter.normal_(std=std)


def test_left_padded_rows_generate_as_alone_with_chapters():
    """Routing chunks count real tokens, so a left-padded row of a batch generates what it generates alone."""
    model = get_memory_model(tiny_model(), MemoryAdapterConfig(**CHAPTERS))
    train_memory_outputs(model)
    pads = [0, 3, 6]
    ids = input_ids(batch=3)
    attention_mask = torch.ones_like(ids)
    for row, num_pads in enumerate(pads):
        attention_mask[row, :num_pads] = 0
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        batched_logits = model(ids, attention_mask=attention_mask).logits
        generated = model.generate(ids, attention_mask=attention_mask, **kwargs)
        for row, num_pads in enumerate(pads):
            alone = ids[row : row + 1, num_pads:]
            torch.testing.assert_close(batched_logits[row, num_pads:], model(alone).logits[0], rtol=0, atol=1e-5)
            assert torch.equal(generated[row, 11:], model.generate(alone, **kwargs)[0, 11 - num_pads :])


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize(
    "adapter_kwargs",
    [{}, CHAPTERS, dict(memory_placement="after_mlp", memory_bank_type="factorized", memory_sharing="per_layer")],
    ids=["default", "chapters", "after_mlp-factorized-per_layer"],
)
def test_logits_equal_base_at_init_and_memory_changes_them_after_training(architecture, adapter_kwargs):
    base = tiny_model(architecture)
    ids = input_ids()
    reference = base(ids).logits
    model = get_memory_model(base, MemoryAdapterConfig(**adapter_kwargs))
    assert torch.equal(model(ids).logits, reference)
    train_memory_outputs(model)
    assert (model(ids).logits - reference).abs().max() > 1e-3
    with model.disable_adapter():
        assert torch.equal(model(ids).logits, reference)


def test_decoder_layers_found_from_structure_not_model_type():
    base = tiny_model("llama")
    base.config.model_type = "renamed_family"
    decoder, layers = find_decoder_layers(base)
    assert decoder is base.model and layers is base.model.layers
    with pytest.raises(ValueError, match="decoder layers"):
        find_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_only_memory_is_trainable_and_receives_gradients(capsys):
    base = tiny_model()
    model = get_memory_model(base, MemoryAdapterConfig(**CHAPTERS))
    trainable = {name for name, p in base.named_parameters() if p.requires_grad}
    assert trainable and all("memory_adapter." in name or "memory_banks." in name for name in trainable)
    model.print_trainable_parameters()
    trainable_count, total = model.get_nb_trainable_parameters()
    assert f"trainable params: {trainable_count:,d} || all params: {total:,d}" in capsys.readouterr().out
    train_memory_outputs(model)
    model.train()
    ids = input_ids()
    output = model(ids, labels=ids)
    router_loss = model.router_loss()
    assert router_loss is not None and router_loss > 0
    output.loss.backward()
    bank = base.model.memory_banks["0"].memory
    router = base.model.layers[0].memory_adapter.memory_block.router.gate.weight
    assert bank.grad is not None and bank.grad.abs().sum() > 0
    assert router.grad is not None and router.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in base.named_parameters() if name not in trainable)


def test_router_loss_is_added_in_training_only():
    base = tiny_model()
    model = get_memory_model(base, MemoryAdapterConfig(**CHAPTERS))
    ids = input_ids()
    eval_loss = model(ids, labels=ids).loss
    model.train()
    train_loss = model(ids, labels=ids).loss
    assert torch.allclose(train_loss, eval_loss + model.router_loss())
    as_tuple = model(ids, labels=ids, return_dict=False)  # the tuple form keeps the router losses
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], train_loss)


def test_save_and_reload_round_trip_is_exact(tmp_path):
    base = tiny_model()
    model = get_memory_model(base, MemoryAdapterConfig(target_layers=[-1], **CHAPTERS))
    train_memory_outputs(model)
    ids = input_ids()
    with torch.no_grad():  # CPU SDPA picks another kernel for inputs that require grad: compare like with like
        expected = model(ids).logits
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MEMORY_ADAPTER" and saved["target_layers"] == [-1]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert weights and all("memory_adapter." in key or "memory_banks." in key for key in weights)
    assert "model.layers.0.memory_adapter.memory_block.memory_query.weight" not in weights

    reloaded = MemoryAdapterModel.from_pretrained(tiny_model(), tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)
    assert reloaded.get_nb_trainable_parameters()[0] == 0
    trainable = MemoryAdapterModel.from_pretrained(tiny_model(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] > 0


def test_peft_and_transformers_adapter_loaders_name_the_memory_adapter_loader(tmp_path):
    import peft

    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_model().save_pretrained(base_dir)
    get_memory_model(LlamaForCausalLM.from_pretrained(base_dir), MemoryAdapterConfig()).save_pretrained(adapter_dir)
    loaders = {
        "PeftModel": lambda: peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), adapter_dir),
        "AutoPeftModel": lambda: peft.AutoPeftModelForCausalLM.from_pretrained(adapter_dir),
        "PeftConfig": lambda: peft.PeftConfig.from_pretrained(adapter_dir),
        "AutoModelForCausalLM": lambda: AutoModelForCausalLM.from_pretrained(adapter_dir),
        "load_adapter": lambda: LlamaForCausalLM.from_pretrained(base_dir).load_adapter(str(adapter_dir)),
    }
    for name, load in loaders.items():
        with pytest.raises(ValueError, match="MemoryAdapterModel.from_pretrained") as raised:
            load()
        assert repr(str(base_dir)) in str(raised.value), name  # the snippet names the base model to load
    assert repr(str(adapter_dir)) in str(pytest.raises(ValueError, loaders["PeftModel"]).value)


def test_reload_onto_a_different_base_shape_fails_clearly(tmp_path):
    model = get_memory_model(tiny_model(), MemoryAdapterConfig(memory_sharing="per_layer"))
    model.save_pretrained(tmp_path)
    bigger = LlamaForCausalLM(LlamaConfig(**{**TINY, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="do not match"):
        MemoryAdapterModel.from_pretrained(bigger, tmp_path)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_generate_with_cache_equals_generation_without_cache(architecture):
    model = get_memory_model(tiny_model(architecture), MemoryAdapterConfig(**CHAPTERS))
    train_memory_outputs(model, std=1.0)
    prompt = input_ids(batch=2, length=5)
    cached = model.generate(prompt, max_new_tokens=14, do_sample=False, pad_token_id=0)
    uncached = model.generate(prompt, max_new_tokens=14, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    with model.disable_adapter():
        base_tokens = model.generate(prompt, max_new_tokens=14, do_sample=False, pad_token_id=0)
    assert not torch.equal(cached, base_tokens)


def test_static_cache_without_chapters_and_a_clear_error_with_them():
    model = get_memory_model(tiny_model(), MemoryAdapterConfig(num_memory_tokens=32))
    train_memory_outputs(model)
    ids, kwargs = input_ids(batch=1, length=6), dict(max_new_tokens=8, do_sample=False)
    expected = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(model.generate(ids, cache_implementation="static", **kwargs), expected)
    with pytest.raises(ValueError, match="drop cache_implementation"):
        get_memory_model(tiny_model(), MemoryAdapterConfig(**CHAPTERS)).generate(
            ids, cache_implementation="static", **kwargs)


def test_lora_composition_saves_once_and_reloads_identically(tmp_path):
    from peft import LoraConfig

    model = get_memory_model(
        tiny_model(), MemoryAdapterConfig(**CHAPTERS), lora_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    names = [name for name, p in model.base_model.named_parameters() if p.requires_grad]
    assert any("lora_A" in name for name in names) and any("memory_banks" in name for name in names)
    assert not any("memory_adapter" in name and "lora_" in name for name in names)
    train_memory_outputs(model)
    ids = input_ids()
    with torch.no_grad():  # CPU SDPA picks another kernel for inputs that require grad: compare like with like
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["lora_config"]["r"] == 4

    reloaded = MemoryAdapterModel.from_pretrained(tiny_model(), tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)
    with reloaded.disable_adapter():
        assert torch.equal(reloaded(ids).logits, tiny_model()(ids).logits)


def test_separate_learning_rates_through_the_trainer(tmp_path):
    from peft import LoraConfig
    from transformers import Trainer, TrainingArguments

    from hf_memory.adapters import create_memory_optimizer

    model = get_memory_model(
        tiny_model(), MemoryAdapterConfig(**CHAPTERS), lora_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
        lr_scheduler_type="constant", report_to=[], save_strategy="no", use_cpu=True, weight_decay=0.01,
    )
    optimizer = create_memory_optimizer(model, args, memory_learning_rate=3e-2, lora_learning_rate=1e-3)
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates == {"memory_bank": 3e-2, "memory": 3e-2, "lora": 1e-3}
    before = {name: p.detach().clone() for name, p in model.base_model.named_parameters() if p.requires_grad}
    frozen_before = model.base_model.model.embed_tokens.weight.detach().clone()
    Trainer(model=model, args=args, train_dataset=LanguageModelingRows(8), optimizers=(optimizer, None)).train()
    after = dict(model.base_model.named_parameters())
    assert {group["name"]: group["lr"] for group in optimizer.param_groups} == rates
    changed = {name for name, value in before.items() if not torch.equal(value, after[name])}
    assert any("memory_output" in name for name in changed) and any("lora_B" in name for name in changed)
    assert torch.equal(model.base_model.model.embed_tokens.weight, frozen_before)


def test_memory_adapter_trainer_checkpoints_are_adapter_folders_and_resume(tmp_path):
    """A stock Trainer saves a model that is not a PreTrainedModel as its whole state dict, which from_pretrained
    refuses with the fix in the message; MemoryAdapterTrainer writes adapter folders and resumes from them."""
    from safetensors.torch import load_file
    from transformers import Trainer, TrainingArguments

    from hf_memory import MemoryAdapterTrainer

    def arguments(output_dir, **overrides):
        settings = dict(max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[], use_cpu=True,
                        save_steps=2, eval_strategy="steps", eval_steps=2)
        return TrainingArguments(output_dir=str(output_dir), **{**settings, **overrides})

    stock = Trainer(model=get_memory_model(tiny_model(), MemoryAdapterConfig(**CHAPTERS)),
                    args=arguments(tmp_path / "stock", save_strategy="no", eval_strategy="no"))
    stock.save_model()
    with pytest.raises(ValueError, match="MemoryAdapterTrainer"):
        MemoryAdapterModel.from_pretrained(tiny_model(), tmp_path / "stock")
    with pytest.raises(ValueError, match="no adapter_config.json"):
        MemoryAdapterModel.from_pretrained(tiny_model(), tmp_path)

    model = get_memory_model(tiny_model(), MemoryAdapterConfig(**CHAPTERS))
    args = arguments(tmp_path / "run", load_best_model_at_end=True, metric_for_best_model="loss")
    rows = LanguageModelingRows(16)
    trainer = MemoryAdapterTrainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(checkpoint))
    assert not (checkpoint / "model.safetensors").exists()
    best = load_file(tmp_path / "run" / trainer.state.best_model_checkpoint.split("/")[-1] / "adapter_model.safetensors")
    assert all(torch.equal(value, best[name]) for name, value in model.adapter_state_dict().items())
    trainer.save_model()
    reloaded = MemoryAdapterModel.from_pretrained(tiny_model(), tmp_path / "run")
    ids = input_ids()
    torch.testing.assert_close(reloaded(ids).logits, model.eval()(ids).logits, rtol=0, atol=0)

    resumed_model = get_memory_model(tiny_model(), MemoryAdapterConfig(**CHAPTERS))
    resumed = MemoryAdapterTrainer(model=resumed_model, args=arguments(tmp_path / "resumed"),
                                   train_dataset=rows, eval_dataset=rows)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))  # at max_steps: loads, trains no more
    saved = load_file(tmp_path / "run" / "checkpoint-4" / "adapter_model.safetensors")
    assert resumed.state.global_step == 4
    assert all(torch.equal(value, saved[name]) for name, value in resumed_model.adapter_state_dict().items())


def test_lora_learning_rate_is_required_when_lora_is_trained():
    from peft import LoraConfig

    model = get_memory_model(tiny_model(), MemoryAdapterConfig(), lora_config=LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="lora_learning_rate"):
        model.get_optimizer_param_groups(memory_learning_rate=1e-3)


@pytest.mark.parametrize("bits, tolerance", [(8, 0.02), (4, 0.3)])
def test_quantized_memory_bank_logit_error(bits, tolerance):
    model = get_memory_model(tiny_model(), MemoryAdapterConfig(**CHAPTERS))
    train_memory_outputs(model, std=1.0)
    ids = input_ids()
    with model.disable_adapter():
        base_logits = model(ids).logits
    full = model(ids).logits
    memory_effect = (full - base_logits).abs().max()
    bank_bytes = model.base_model.model.memory_banks["0"].memory.numel() * 4
    model.quantize_memory(bits)
    quantized_bank = model.base_model.model.memory_banks["0"]
    quantized = model(ids).logits
    error = (quantized - full).abs().max()
    print(f"{bits}-bit memory bank: max |logit error| {error:.2e}, memory effect {memory_effect:.2e}")
    assert 0 < error < tolerance * memory_effect
    assert quantized_bank.storage_bytes() < bank_bytes * (bits / 32 + 0.1)
    with pytest.raises(ValueError, match="quantized"):
        model.save_pretrained("unused")


def test_merge_and_unload_exports_plain_model_when_exact(tmp_path):
    from peft import LoraConfig

    base = tiny_model()
    model = get_memory_model(base, MemoryAdapterConfig(), lora_config=LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, parameter in base.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.3)
    ids = input_ids()
    expected = model(ids).logits
    merged = model.merge_and_unload()
    assert type(merged) is LlamaForCausalLM and type(merged.model.layers[0]).__name__ == "LlamaDecoderLayer"
    assert not any("memory" in name or "lora" in name for name in merged.state_dict())
    torch.testing.assert_close(merged(ids).logits, expected)
    merged.save_pretrained(tmp_path)
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits, expected)


def test_merge_and_unload_refuses_to_drop_trained_memory_silently():
    base = tiny_model()
    reference = base(input_ids()).logits
    model = get_memory_model(base, MemoryAdapterConfig())
    train_memory_outputs(model)
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    with pytest.warns(UserWarning, match="no memory"):
        plain = model.merge_and_unload(drop_memory=True)
    assert torch.equal(plain(input_ids()).logits, reference)


def test_unload_restores_the_base_model_and_allows_a_new_adapter():
    base = tiny_model()
    ids = input_ids()
    reference = base(ids).logits
    model = get_memory_model(base, MemoryAdapterConfig())
    with pytest.raises(ValueError, match="already holds"):
        get_memory_model(base, MemoryAdapterConfig())
    train_memory_outputs(model)
    assert model.unload() is base
    assert torch.equal(base(ids).logits, reference)
    assert all(p.requires_grad for p in base.parameters())
    assert torch.equal(get_memory_model(base, MemoryAdapterConfig())(ids).logits, reference)


def test_config_round_trip_and_validation(tmp_path):
    config = MemoryAdapterConfig(target_layers=[0, -1], **CHAPTERS)
    config.save_pretrained(tmp_path)
    assert MemoryAdapterConfig.from_pretrained(tmp_path) == config
    assert config.resolve_target_layers(4) == [0, 3]
    bad = [
        (dict(memory_bank_type="huge"), "memory_bank_type"),
        (dict(use_chapters=True, num_chapters=4, top_k_chapters=5), "top_k_chapters"),
        (dict(use_chapters=True, num_memory_tokens=30, num_chapters=4), "num_memory_tokens"),
        (dict(target_layers=[1, 1]), "target_layers"),
        (dict(peft_type="LORA"), "peft_type"),
        (dict(memory_placement="inside"), "memory_placement"),
        (dict(num_memory_tokens=16.5), "num_memory_tokens"),
        (dict(memory_num_attention_heads=0), "memory_num_attention_heads"),
    ]
    for kwargs, field_name in bad:
        with pytest.raises(ValueError, match=field_name):
            MemoryAdapterConfig(**kwargs)
    with pytest.raises(ValueError, match="target_layers"):
        MemoryAdapterConfig(target_layers=[5]).resolve_target_layers(2)
    written_by_peft = {**config.to_dict(), "peft_version": "0.21.2"}  # PEFT's bookkeeping key is ignored
    (tmp_path / "adapter_config.json").write_text(json.dumps(written_by_peft))
    assert MemoryAdapterConfig.from_pretrained(tmp_path) == config
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="not a memory adapter"):
        MemoryAdapterConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither a local folder nor a Hub repository id"):  # not the Hub's error
        MemoryAdapterModel.from_pretrained(tiny_model(), tmp_path / "missing")


def test_default_adapter_deep_copies_with_shared_bank():
    model = get_memory_model(tiny_model(), MemoryAdapterConfig())
    train_memory_outputs(model)
    ids = input_ids()
    clone = copy.deepcopy(model)
    assert torch.equal(clone(ids).logits, model(ids).logits)
    layers = list(clone.base_model.model.layers)
    assert layers[0].memory_adapter.memory_bank is layers[1].memory_adapter.memory_bank
    assert layers[0].memory_adapter.memory_bank is clone.base_model.model.memory_banks["0"]
