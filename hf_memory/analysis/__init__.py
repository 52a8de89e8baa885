"""Interpretability tools: GMM routing analysis, and plots (matplotlib from the `analysis` extra)."""

from .gmm_analyzer import GMMAnalyzer, squad_document_dataloader
from .plots import plot_diversity_matrix, plot_entropy_timeline, plot_expert_utilization, plot_routing_heatmap

__all__ = [
    "GMMAnalyzer",
    "plot_diversity_matrix",
    "plot_entropy_timeline",
    "plot_expert_utilization",
    "plot_routing_heatmap",
    "squad_document_dataloader",
]
