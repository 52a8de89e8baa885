import json

import pytest
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.hf_api import RepoUrl

from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering
from hf_memory.model_cards import render_model_card, write_model_card

TINY = dict(vocab_size=100, d_model=32, n_layer=1, n_head=4, d_inner=64, memory_num_tokens=2)


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_card_has_hub_metadata_and_model_index():
    card = render_model_card(MemXLNetConfig(**TINY), "me/memxlnet-tiny", datasets=["squad_v2"],
                             base_model="xlnet-base-cased", eval_results={"exact": 61.25, "f1": 64.5, "total": 9})
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "question-answering"
    assert "custom_code" in meta["tags"] and meta["datasets"] == ["squad_v2"]
    assert meta["base_model"] == "xlnet-base-cased"
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"exact_match": 61.25, "f1": 64.5}
    assert 'pipeline("question-answering", model="me/memxlnet-tiny", trust_remote_code=True)' in card


def test_save_pretrained_writes_a_card_but_keeps_a_users_own(tmp_path):
    model = MemXLNetForQuestionAnswering(MemXLNetConfig(**TINY))
    model.save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert front_matter(card)["pipeline_tag"] == "question-answering"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("my card")
    model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == "my card"
    assert write_model_card(tmp_path / "b", model.config) is None


def test_models_loaded_from_plain_llama_and_xlnet_checkpoints_save_with_our_card(tmp_path):
    """Llama and XLNet checkpoints, which memory is added to, are read as our own type; a config read from another
    checkpoint (here Mistral's) keeps that `model_type` as an attribute. Either way the card (and so
    `save_pretrained`) follows the model's own family."""
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, XLNetConfig,
                              XLNetForQuestionAnsweringSimple)

    from hf_memory import MemoryTransformerForCausalLM

    decoder = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                   num_key_value_heads=2)
    LlamaForCausalLM(LlamaConfig(**decoder)).save_pretrained(tmp_path / "llama")
    MistralForCausalLM(MistralConfig(**decoder)).save_pretrained(tmp_path / "mistral")
    XLNetForQuestionAnsweringSimple(XLNetConfig(vocab_size=100, d_model=32, n_layer=1, n_head=4,
                                                d_inner=64)).save_pretrained(tmp_path / "xlnet")
    loaded = {
        "llama": MemoryTransformerForCausalLM.from_pretrained(tmp_path / "llama", num_memory_tokens=16),
        "mistral": MemoryTransformerForCausalLM.from_pretrained(tmp_path / "mistral", num_memory_tokens=16),
        "xlnet": MemXLNetForQuestionAnswering.from_pretrained(tmp_path / "xlnet", memory_num_tokens=2),
    }
    assert loaded["mistral"].config.model_type == "mistral"
    for source, model in loaded.items():
        if source != "mistral":
            assert model.config.model_type == type(model.config).model_type  # read as ours, without a type warning
        out = tmp_path / f"saved_{source}"
        model.save_pretrained(out)
        task = "question-answering" if source == "xlnet" else "text-generation"
        assert front_matter((out / "README.md").read_text())["pipeline_tag"] == task
        assert json.loads((out / "config.json").read_text())["model_type"] == type(model.config).model_type


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="No model card template"):
        render_model_card(type("Cfg", (), {"model_type": "bert"})(), "x")


def test_push_to_hub_uploads_code_config_weights_and_our_card(monkeypatch, tmp_path):
    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"{constants.ENDPOINT}/{repo_id}"))

    def record_commit(self, repo_id, operations, **kwargs):
        commits.append({"repo_id": repo_id, "files": {
            op.path_in_repo: open(op.path_or_fileobj, "rb").read() for op in operations}})

    monkeypatch.setattr(HfApi, "create_commit", record_commit)
    model = MemXLNetForQuestionAnswering(MemXLNetConfig(**TINY))
    model.push_to_hub("me/memxlnet-tiny")
    (commit,) = commits
    assert commit["repo_id"] == "me/memxlnet-tiny"
    files = commit["files"]
    assert {"config.json", "model.safetensors", "modeling_memxlnet.py", "configuration_memxlnet.py",
            "pipeline_question_answering.py", "README.md"} <= set(files)
    config = json.loads(files["config.json"])
    assert config["auto_map"]["AutoModelForQuestionAnswering"] == "modeling_memxlnet.MemXLNetForQuestionAnswering"
    assert "question-answering" in config["custom_pipelines"]
    card = files["README.md"].decode()
    assert "hf_memory" in front_matter(card)["tags"]
    assert 'model="me/memxlnet-tiny"' in card
    # Every relative import of the uploaded code is uploaded too (loadable with trust_remote_code).
    for name, content in files.items():
        if name.endswith(".py"):
            for line in content.decode().splitlines():
                if line.strip().startswith("from .") and " import " in line:
                    assert line.strip().split()[1][1:] + ".py" in files, line


def test_memory_adapter_card_names_the_base_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_memory import MemoryAdapterConfig, get_memory_model

    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2))
    model = get_memory_model(base, MemoryAdapterConfig(base_model_name_or_path="meta-llama/Llama-3.2-1B"))
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert front_matter(card)["base_model"] == "meta-llama/Llama-3.2-1B"
    assert 'AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B")' in card
    assert f'MemoryAdapterModel.from_pretrained(base, "{tmp_path}")' in card
