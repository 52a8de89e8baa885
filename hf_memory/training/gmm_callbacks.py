"""Routing statistics of mixture-of-experts memory models (GMMXLNet) logged during training.

Model-agnostic: a forward hook reads `routing_probs` (batch, k) from the outputs of any model that returns it, so
the trainer needs no GMM-specific code.
"""

import torch
from transformers import TrainerCallback

from ..models.memxlnet.modeling_gmmxlnet import routing_entropy


class RoutingStatisticsCallback(TrainerCallback):
    """After every training-loss log, log the routing since the previous one as a separate entry at the same step.

    Logged keys: `routing_entropy` (mean, nats), `routing_utilization_{j}` (mean probability of expert j),
    `routing_top_expert_{j}` (share of segments whose most probable expert is j). Rows masked out by the model's
    `segment_mask` argument (documents that already ended) are not counted.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self._hook = None
        self._logging = False
        self._reset()

    def _reset(self):
        self._probability_sum = None
        self._top_counts = None
        self._entropy_sum = 0.0
        self._rows = 0

    def _record(self, module, args, kwargs, output):
        probs = getattr(output, "routing_probs", None)
        if probs is None or not module.training:
            return
        probs = probs.detach().float()
        mask = kwargs.get("segment_mask")
        if mask is not None:
            probs = probs[mask.to(torch.bool).view(-1)]
        if probs.shape[0] == 0:
            return
        top = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1]).cpu()
        if self._probability_sum is None:
            self._probability_sum, self._top_counts = torch.zeros(probs.shape[-1]), torch.zeros(probs.shape[-1])
        self._probability_sum += probs.sum(0).cpu()
        self._top_counts += top
        self._entropy_sum += routing_entropy(probs).sum().item()
        self._rows += probs.shape[0]

    def statistics(self) -> dict[str, float]:
        """Routing statistics since the last log (empty when no routing was recorded)."""
        if not self._rows:
            return {}
        stats = {"routing_entropy": self._entropy_sum / self._rows}
        for expert, (utilization, top) in enumerate(zip(self._probability_sum / self._rows,
                                                        self._top_counts / self._rows)):
            stats[f"routing_utilization_{expert}"] = utilization.item()
            stats[f"routing_top_expert_{expert}"] = top.item()
        return stats

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self._hook is None and model is not None:
            self._hook = model.register_forward_hook(self._record, with_kwargs=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._logging or not logs or "loss" not in logs:
            return
        stats = self.statistics()
        self._reset()
        if stats:
            self._logging = True
            try:
                self.trainer.log(stats)
            finally:
                self._logging = False

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
