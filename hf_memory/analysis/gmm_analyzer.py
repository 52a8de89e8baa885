"""Routing analysis of GMMXLNet models: expert utilisation, routing entropy, expert diversity and consistency.

The analyzer replays whole documents segment by segment (carrying memory exactly as training and the pipeline do)
and records, for every active segment, the write routing probabilities and the expert memories it produced.
"""

import json
import math
import os
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

from ..models.memxlnet.modeling_gmmxlnet import GMMXLNetExpertMemory, routing_entropy
from ..models.memxlnet.qa_processing_memxlnet import reading_passes, reading_steps

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class GMMAnalyzer:
    """Collects routing statistics of a GMMXLNet model over a dataloader.

    Batches are either document batches from `hf_memory.data.SegmentCollator` (`input_ids` of shape
    `(batch, segments, seq_len)` with a `(batch, segments)` `segment_mask`) or single-segment batches
    (`(batch, seq_len)`, each row a one-segment document).
    """

    def __init__(self, model, device: str | torch.device | None = None):
        memory = getattr(model, "memory", None)
        # Remote-code checkpoints carry their own copy of the class, so match it by name too.
        if not isinstance(memory, GMMXLNetExpertMemory) and type(memory).__name__ != GMMXLNetExpertMemory.__name__:
            raise ValueError(
                f"GMMAnalyzer needs a GMMXLNet model (expert-mixture memory), got {type(model).__name__} with memory "
                f"{type(memory).__name__}. Fix: load the checkpoint with GMMXLNetForQuestionAnswering or "
                "AutoModelForQuestionAnswering."
            )
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.num_experts = memory.num_experts
        self.reset()

    def reset(self):
        """Forget all tracked segments."""
        self.routing_data = {"routing_probs": [], "entropy": [], "document_index": [], "segment_index": []}
        self._similarity_sum = torch.zeros(self.num_experts, self.num_experts, dtype=torch.float64)
        self._num_documents = 0

    @property
    def total_segments(self) -> int:
        return sum(part.shape[0] for part in self.routing_data["entropy"])

    def _document_batches(self, batch: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs = {key: batch[key].to(self.device) for key in MODEL_INPUT_KEYS if key in batch}
        if "input_ids" not in inputs:
            raise ValueError("GMMAnalyzer batches need input_ids. Fix: use hf_memory.data.SegmentCollator batches.")
        if inputs["input_ids"].dim() == 2:
            inputs = {key: value.unsqueeze(1) for key, value in inputs.items()}
        batch_size, num_steps = inputs["input_ids"].shape[:2]
        segment_mask = batch.get("segment_mask")
        if segment_mask is None:
            segment_mask = torch.ones(batch_size, num_steps, dtype=torch.bool)
        return inputs, segment_mask.to(self.device, torch.bool)

    @torch.no_grad()
    def track_routing(self, dataloader: Iterable[Mapping[str, torch.Tensor]], max_segments: int | None = None) -> dict:
        """Run the model over `dataloader` (at most `max_segments` segments) and return `routing_statistics()`."""
        if max_segments is not None and max_segments < 1:
            raise ValueError(f"max_segments must be >= 1 (or None for all), got {max_segments}.")
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in dataloader:
                if max_segments is not None and self.total_segments >= max_segments:
                    break
                self._track_batch(batch, max_segments)
        finally:
            self.model.train(was_training)
        return self.routing_statistics()

    def _track_batch(self, batch, max_segments):
        inputs, segment_mask = self._document_batches(batch)
        batch_size, num_steps = segment_mask.shape
        memory_module = self.model.memory
        document_index = torch.arange(self._num_documents, self._num_documents + batch_size)
        self._num_documents += batch_size
        memory = None
        # the pass of the model's (first) memory, which a bidirectional model makes last
        direction, _ = reading_passes(getattr(self.model.config, "reading_order", "forward"))[-1]
        for step in reading_steps(num_steps, direction):
            active = segment_mask[:, step]
            if max_segments is not None:
                room = max_segments - self.total_segments
                active = active & (torch.cumsum(active.long(), 0) <= room)
            if not bool(active.any()):
                break
            outputs = self.model(
                **{key: value[:, step] for key, value in inputs.items()}, memory_state=memory, segment_mask=active
            )
            memory = outputs.memory_state
            probs = outputs.routing_probs[active].float().cpu()
            self.routing_data["routing_probs"].append(probs)
            self.routing_data["entropy"].append(routing_entropy(probs))
            self.routing_data["document_index"].append(document_index[active.cpu()])
            self.routing_data["segment_index"].append(torch.full((probs.shape[0],), step))
            experts = F.normalize(memory_module.expert_memories(memory[active]).flatten(2).float(), dim=-1)
            self._similarity_sum += (experts @ experts.transpose(1, 2)).sum(0).double().cpu()

    def _tracked(self, key: str) -> torch.Tensor:
        parts = self.routing_data[key]
        return torch.cat(parts) if parts else torch.empty(0)

    def routing_statistics(self) -> dict:
        """`expert_utilization` (mean routing probability per expert), entropy mean/std (nats), segment count, ..."""
        probs, entropy = self._tracked("routing_probs"), self._tracked("entropy")
        if probs.numel() == 0:
            raise ValueError("No segments tracked yet. Fix: call track_routing(dataloader) with a non-empty dataloader.")
        utilization = probs.mean(0)
        top_expert = torch.bincount(probs.argmax(-1), minlength=self.num_experts).float() / probs.shape[0]
        return {
            "expert_utilization": utilization.tolist(),
            "top_expert_frequency": top_expert.tolist(),
            "mean_entropy": entropy.mean().item(),
            "std_entropy": entropy.std(unbiased=False).item(),
            "max_entropy": math.log(self.num_experts),
            "utilization_variance": utilization.var(unbiased=False).item(),
            "total_segments": int(probs.shape[0]),
            "total_documents": int(self._tracked("document_index").unique().numel()),
        }

    def compute_expert_diversity(self) -> torch.Tensor:
        """(k, k) mean cosine similarity between the expert memories written for the tracked segments.

        Without tracked segments, the similarity of the learned initial expert memories.
        """
        if self.total_segments:
            return (self._similarity_sum / self.total_segments).float()
        experts = F.normalize(self.model.memory.initial_experts.detach().flatten(1).float().cpu(), dim=-1)
        return experts @ experts.T

    def compute_routing_consistency(self) -> float:
        """Share of consecutive segment pairs of a document whose top expert is the same (1.0 = never switches)."""
        probs, documents = self._tracked("routing_probs"), self._tracked("document_index")
        if probs.numel() == 0:
            raise ValueError("No segments tracked yet. Fix: call track_routing(dataloader) first.")
        order = torch.argsort(documents * (self._tracked("segment_index").max() + 1) + self._tracked("segment_index"))
        top, documents = probs.argmax(-1)[order], documents[order]
        same_document = documents[1:] == documents[:-1]
        if not bool(same_document.any()):
            return float("nan")
        return (top[1:] == top[:-1])[same_document].float().mean().item()

    def plot_data(self) -> dict:
        """The tracked routing as tensors: routing_probs (N, k), entropy (N,), document_index and segment_index (N,)."""
        return {key: self._tracked(key) for key in self.routing_data}

    def build_report(self) -> dict:
        diversity = self.compute_expert_diversity()
        off_diagonal = diversity[~torch.eye(self.num_experts, dtype=torch.bool)]
        return {
            "num_experts": self.num_experts,
            "routing_mode": self.model.config.routing_mode,
            "routing_temperature": self.model.config.routing_temperature,
            "routing_statistics": self.routing_statistics(),
            "routing_consistency": self.compute_routing_consistency(),
            "expert_diversity_matrix": diversity.tolist(),
            "mean_off_diagonal_similarity": off_diagonal.mean().item(),
        }

    def save_report(self, path: str | os.PathLike) -> dict:
        """Write `build_report()` as JSON (NaN written as null) and return it."""
        report = self.build_report()
        if math.isnan(report["routing_consistency"]):
            report["routing_consistency"] = None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        return report

    def save_plots(self, output_dir: str | os.PathLike, max_segments: int = 100) -> list[str]:
        """Routing heatmap, utilisation bars, entropy timeline and diversity matrix as PNG files (needs matplotlib)."""
        from .plots import plot_diversity_matrix, plot_entropy_timeline, plot_expert_utilization, plot_routing_heatmap

        os.makedirs(output_dir, exist_ok=True)
        data = self.plot_data()
        figures = {
            "routing_heatmap.png": plot_routing_heatmap(data, max_segments=max_segments),
            "expert_utilization.png": plot_expert_utilization(self.routing_statistics()["expert_utilization"]),
            "entropy_timeline.png": plot_entropy_timeline(data, num_experts=self.num_experts),
            "expert_diversity.png": plot_diversity_matrix(self.compute_expert_diversity()),
        }
        paths = []
        for name, figure in figures.items():
            path = os.path.join(output_dir, name)
            figure.savefig(path, dpi=120, bbox_inches="tight")
            paths.append(path)
        return paths


def squad_document_dataloader(
    data_file: str | os.PathLike,
    tokenizer,
    config,
    *,
    max_examples: int | None = None,
    batch_size: int = 8,
    max_seq_length: int = 384,
    doc_stride: int = 64,
    max_query_length: int = 64,
    max_n_segs: int | None = None,
):
    """Document batches (SegmentCollator) of a local SQuAD-format file, segmented for `config`'s memory tokens."""
    from torch.utils.data import DataLoader

    from ..data import SegmentCollator, load_raw_datasets, preprocess_qa_dataset

    examples = load_raw_datasets(data_files={"validation": str(data_file)})["validation"]
    if max_examples is not None:
        examples = examples.select(range(min(max_examples, len(examples))))
    features = preprocess_qa_dataset(
        examples, tokenizer, split="validation", max_seq_length=max_seq_length, doc_stride=doc_stride,
        max_n_segs=max_n_segs, max_query_length=max_query_length, memory_read_ids=config.mem_read_token_ids,
        memory_write_ids=config.mem_write_token_ids,
    )
    collator = SegmentCollator(
        tokenizer.pad_token_id, tokenizer.cls_token_id, reading_order=getattr(config, "reading_order", "forward")
    )
    return DataLoader(features, batch_size=batch_size, collate_fn=collator)
