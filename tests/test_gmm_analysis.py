import json
import math

import pytest
import torch

from hf_memory.analysis import GMMAnalyzer
from hf_memory.models.memxlnet.configuration_memxlnet import GMMXLNetConfig, MemXLNetConfig
from hf_memory.models.memxlnet.modeling_gmmxlnet import GMMXLNetForQuestionAnswering, routing_entropy
from hf_memory.models.memxlnet.modeling_memxlnet import MemXLNetForQuestionAnswering

TINY = dict(vocab_size=120, d_model=32, n_layer=1, n_head=4, d_inner=64, dropout=0.0)


def make_model():
    torch.manual_seed(0)
    config = GMMXLNetConfig(**TINY, memory_num_tokens=2, num_memory_experts=3, routing_temperature=0.2)
    return GMMXLNetForQuestionAnswering(config).eval()


def document_batch(config, segments_per_document, length=16, seed=0):
    """A SegmentCollator-shaped batch: input_ids (docs, steps, length) and segment_mask (docs, steps)."""
    generator = torch.Generator().manual_seed(seed)
    steps, m = max(segments_per_document), config.memory_num_tokens
    ids = torch.randint(10, TINY["vocab_size"], (len(segments_per_document), steps, length), generator=generator)
    ids[..., :m] = torch.tensor(config.mem_read_token_ids)
    ids[..., -m - 1 : -1] = torch.tensor(config.mem_write_token_ids)
    ids[..., -1] = 3
    mask = torch.arange(steps)[None, :] < torch.tensor(segments_per_document)[:, None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "segment_mask": mask}


def manual_routing(model, batch):
    """Routing of every active segment, carrying memory by hand, in (document, segment) order."""
    probs, memory = {}, None
    for step in range(batch["input_ids"].shape[1]):
        mask = batch["segment_mask"][:, step]
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"][:, step], memory_state=memory, segment_mask=mask)
        memory = out.memory_state
        for row in torch.nonzero(mask).flatten().tolist():
            probs[(row, step)] = out.routing_probs[row]
    return torch.stack([probs[key] for key in sorted(probs)])


def test_track_routing_statistics_match_the_model_outputs():
    model = make_model()
    batches = [document_batch(model.config, [3, 1, 2], seed=0), document_batch(model.config, [2, 2], seed=1)]
    stats = GMMAnalyzer(model).track_routing(batches)
    expected = torch.cat([manual_routing(model, batch) for batch in batches])
    assert stats["total_segments"] == 10 and stats["total_documents"] == 5
    torch.testing.assert_close(torch.tensor(stats["expert_utilization"]), expected.mean(0))
    entropy = routing_entropy(expected)
    assert stats["mean_entropy"] == pytest.approx(entropy.mean().item(), abs=1e-6)
    assert stats["std_entropy"] == pytest.approx(entropy.std(unbiased=False).item(), abs=1e-6)
    assert 0 < stats["mean_entropy"] < math.log(3) == pytest.approx(stats["max_entropy"])
    assert sum(stats["top_expert_frequency"]) == pytest.approx(1.0)


def test_max_segments_stops_tracking_and_single_segment_batches_work():
    model = make_model()
    analyzer = GMMAnalyzer(model)
    stats = analyzer.track_routing([document_batch(model.config, [3, 3, 3])] * 3, max_segments=4)
    assert stats["total_segments"] == 4
    analyzer.reset()
    flat = document_batch(model.config, [1, 1])
    stats = analyzer.track_routing([{"input_ids": flat["input_ids"][:, 0]}])
    assert stats["total_segments"] == 2


def test_consistency_and_diversity():
    model = make_model()
    analyzer = GMMAnalyzer(model)
    batch = document_batch(model.config, [4, 3], seed=3)
    analyzer.track_routing([batch])
    top = manual_routing(model, batch).argmax(-1).tolist()  # rows: doc 0 steps 0..3, doc 1 steps 0..2
    pairs = [(top[i], top[i + 1]) for i in (0, 1, 2, 4, 5)]
    assert analyzer.compute_routing_consistency() == pytest.approx(sum(a == b for a, b in pairs) / len(pairs))
    diversity = analyzer.compute_expert_diversity()
    assert diversity.shape == (3, 3)
    torch.testing.assert_close(diversity.diagonal(), torch.ones(3))
    torch.testing.assert_close(diversity, diversity.T)
    assert diversity[~torch.eye(3, dtype=torch.bool)].abs().max() < 0.999


def test_report_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    model = make_model()
    analyzer = GMMAnalyzer(model)
    analyzer.track_routing([document_batch(model.config, [3, 2])])
    report = analyzer.save_report(tmp_path / "analysis_report.json")
    saved = json.loads((tmp_path / "analysis_report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["num_experts"] == 3 and saved["routing_statistics"]["total_segments"] == 5
    assert len(saved["expert_diversity_matrix"]) == 3
    paths = analyzer.save_plots(tmp_path / "plots")
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == [
        "entropy_timeline.png", "expert_diversity.png", "expert_utilization.png", "routing_heatmap.png"]
    for path in paths:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rejects_models_without_expert_memory_and_empty_tracking():
    memxlnet = MemXLNetForQuestionAnswering(MemXLNetConfig(**TINY, memory_num_tokens=2))
    with pytest.raises(ValueError, match="GMMAnalyzer needs a GMMXLNet model"):
        GMMAnalyzer(memxlnet)
    with pytest.raises(ValueError, match="No segments tracked yet"):
        GMMAnalyzer(make_model()).routing_statistics()
