"""Matplotlib figures of GMM routing (the `analysis` extra: `pip install hf_memory[analysis]`).

Figures are built with `matplotlib.figure.Figure` (no pyplot state, no display needed); call `fig.savefig(path)`.
"""

import math
from collections.abc import Mapping, Sequence

import torch


def _figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "GMM plots need matplotlib. Fix: pip install 'hf_memory[analysis]' (or pip install matplotlib)."
        ) from None
    return Figure(figsize=figsize)


def plot_routing_heatmap(routing_data: Mapping[str, torch.Tensor], max_segments: int = 100, figsize=(12, 4)):
    """Segments (x) by experts (y), colour = routing probability; from `GMMAnalyzer.plot_data()`."""
    probs = torch.as_tensor(routing_data["routing_probs"])[:max_segments]
    figure = _figure(figsize)
    axes = figure.add_subplot()
    image = axes.imshow(probs.T.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_xlabel("segment")
    axes.set_ylabel("expert")
    axes.set_yticks(range(probs.shape[1]))
    axes.set_title(f"Routing probabilities ({probs.shape[0]} segments)")
    figure.colorbar(image, ax=axes, label="routing probability")
    return figure


def plot_expert_utilization(utilization: Sequence[float], figsize=(8, 5)):
    """Bar chart of the mean routing probability per expert, with the balanced level 1/k dashed."""
    utilization = [float(value) for value in utilization]
    figure = _figure(figsize)
    axes = figure.add_subplot()
    bars = axes.bar(range(len(utilization)), utilization, color="tab:blue")
    axes.bar_label(bars, fmt="%.3f")
    axes.axhline(1.0 / len(utilization), color="gray", linestyle="--", label="balanced (1/k)")
    axes.set_xticks(range(len(utilization)))
    axes.set_xlabel("expert")
    axes.set_ylabel("mean routing probability")
    axes.set_title("Expert utilisation")
    axes.legend()
    return figure


def plot_entropy_timeline(routing_data: Mapping[str, torch.Tensor], num_experts: int | None = None, figsize=(12, 4)):
    """Routing entropy of every tracked segment in tracking order, with its mean and (if k given) log(k)."""
    entropy = torch.as_tensor(routing_data["entropy"]).numpy()
    figure = _figure(figsize)
    axes = figure.add_subplot()
    axes.plot(range(len(entropy)), entropy, linewidth=1.0, label="entropy")
    axes.axhline(float(entropy.mean()), color="tab:orange", linestyle="--", label=f"mean {entropy.mean():.3f}")
    if num_experts:
        axes.axhline(math.log(num_experts), color="gray", linestyle=":", label=f"uniform log({num_experts})")
    axes.set_xlabel("segment")
    axes.set_ylabel("routing entropy (nats)")
    axes.set_title("Routing entropy")
    axes.legend()
    return figure


def plot_diversity_matrix(similarity: torch.Tensor, figsize=(6, 5)):
    """Cosine similarity between expert memories, annotated; low off-diagonal values mean diverse experts."""
    similarity = torch.as_tensor(similarity).float()
    figure = _figure(figsize)
    axes = figure.add_subplot()
    image = axes.imshow(similarity.numpy(), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    for (row, column), value in zip(torch.cartesian_prod(*(torch.arange(similarity.shape[0]),) * 2).tolist(),
                                    similarity.flatten().tolist()):
        axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    axes.set_xticks(range(similarity.shape[0]))
    axes.set_yticks(range(similarity.shape[0]))
    axes.set_xlabel("expert")
    axes.set_ylabel("expert")
    axes.set_title("Expert memory cosine similarity")
    figure.colorbar(image, ax=axes)
    return figure
