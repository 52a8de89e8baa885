"""How a memory model uses its memory over a long document: attention on the READ tokens and memory slot updates.

    python examples/analyze_memory_attention.py --model-path outputs/memxlnet-differentiable/final --output-dir attention_analysis
    python examples/analyze_memory_attention.py --output-dir attention_analysis      # tiny untrained model

The document (default: the first question of the long Natural Questions documents, tens of 384-token segments) is
segmented exactly as training and the pipeline do, then run segment by segment carrying memory. For every segment
it records, per layer and head, the share of attention that the document's tokens give to each `[MEM_READ_i]`
token (what the model takes from memory), and how much each slot's READ value changes for the next segment
(relative L2 change of `model.memory.read(state)`: which slots the model writes). Works for token, differentiable
and GMM memory. Writes to `--output-dir`:

  read_attention_heatmap.png   segments x READ slots, attention share (mean over layers and heads)
  read_attention_per_head.png  layer/head x segments, total attention share on the READ tokens vs a uniform share
  memory_slot_updates.png      segments x slots, relative change of the slot's READ value
  memory_analysis.json         the numbers behind the plots

Without `--model-path` a tiny randomly initialised MemXLNet with a tokenizer trained on the file is analysed (to
see the tool work in seconds; the patterns mean something only for a trained model).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data")) / "squad_v2"
sys.path.insert(0, str(REPO_ROOT))

from matplotlib.figure import Figure  # noqa: E402
from transformers import AutoModelForQuestionAnswering, AutoTokenizer  # noqa: E402

from hf_memory import (  # noqa: E402
    MemXLNetConfig,
    MemXLNetForQuestionAnswering,
    add_memory_tokens,
    train_xlnet_tokenizer,
)
from hf_memory.analysis import squad_document_dataloader  # noqa: E402
from hf_memory.models.memxlnet.qa_processing_memxlnet import reading_passes, reading_steps  # noqa: E402
from hf_memory.training.arguments import missing_local_model_path  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", default=None, help="Memory checkpoint (default: a tiny untrained model).")
    parser.add_argument("--output-dir", default="attention_analysis")
    parser.add_argument("--data-path", default=str(DATA_DIR / "nq-long-documents.json"), help="SQuAD-format JSON.")
    parser.add_argument("--example-index", type=int, default=0, help="Which question (and its document) to analyse.")
    parser.add_argument("--max-segments", type=int, default=24, help="Analyse at most this many segments.")
    parser.add_argument("--max-seq-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=64)
    parser.add_argument("--max-query-length", type=int, default=64)
    parser.add_argument("--memory-tokens", type=int, default=8, help="Tiny model only: memory token pairs.")
    parser.add_argument("--memory-impl", choices=["token", "differentiable"], default="token", help="Tiny model only.")
    args = parser.parse_args(argv)
    path = args.model_path
    if missing_local_model_path(path):
        parser.error(f"--model-path {path} is not a folder (nor a Hub id); train one first (python "
                     "examples/train_with_differentiable_memory.py writes outputs/memxlnet-differentiable/final), "
                     "or leave --model-path out to analyse a tiny untrained model.")
    return args


def tiny_model(args):
    """A randomly initialised 2-layer MemXLNet and a tokenizer trained on the analysed file."""
    tokenizer = train_xlnet_tokenizer([args.data_path], vocab_size=2000, model_max_length=args.max_seq_length)
    read_ids, write_ids = add_memory_tokens(tokenizer, args.memory_tokens)
    config = MemXLNetConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, d_model=64, n_layer=2, n_head=4, d_inner=256,
        memory_num_tokens=args.memory_tokens, memory_impl=args.memory_impl, mem_read_token_ids=read_ids,
        mem_write_token_ids=write_ids,
    )
    torch.manual_seed(0)
    return MemXLNetForQuestionAnswering(config), tokenizer


def load_document(args, tokenizer, config) -> dict:
    """The segments of question `--example-index` (one document batch from SegmentCollator)."""
    dataloader = squad_document_dataloader(
        args.data_path, tokenizer, config, max_examples=args.example_index + 1, batch_size=1,
        max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length,
        max_n_segs=args.max_segments,
    )
    *_, document = iter(dataloader)
    return document


@torch.no_grad()
def trace_memory(model, document: dict) -> dict:
    """Per segment (in document order, read as the pass of the model's first memory reads it; a bidirectional model's
    second memory is not traced): attention share on each READ token (layers, heads, slots) and the relative change
    of each slot."""
    config = model.config
    read_ids = torch.tensor(config.mem_read_token_ids)
    memory = model.get_initial_memory_state(1)
    num_segments = int(document["segment_mask"][0].sum())
    read_attention, slot_updates, real_tokens = [None] * num_segments, [None] * num_segments, [None] * num_segments
    direction, _ = reading_passes(config.reading_order)[-1]
    for step in reading_steps(num_segments, direction):
        inputs = {key: document[key][:, step] for key in ("input_ids", "attention_mask", "token_type_ids")}
        outputs = model(**inputs, memory_state=memory, output_attentions=True)
        read_one_hot = (inputs["input_ids"][0].unsqueeze(-1) == read_ids).to(torch.float32)  # (L, m)
        query_mask = inputs["attention_mask"][0].to(torch.float32)  # real tokens ask, padding does not
        attention = torch.stack(outputs.attentions)[:, 0]  # (layers, heads, L query, L key)
        per_slot = torch.einsum("hlqk,km->hlqm", attention, read_one_hot)
        read_attention[step] = torch.einsum("hlqm,q->hlm", per_slot, query_mask) / query_mask.sum()
        before, after = model.memory.read(memory)[0], model.memory.read(outputs.memory_state)[0]
        slot_updates[step] = (after - before).norm(dim=-1) / before.norm(dim=-1).clamp(min=1e-6)
        real_tokens[step] = int(query_mask.sum())
        memory = outputs.memory_state
    return {
        "read_attention": torch.stack(read_attention),  # (segments, layers, heads, m)
        "slot_updates": torch.stack(slot_updates),  # (segments, m)
        "real_tokens": real_tokens,
    }


def heatmap(values: torch.Tensor, title: str, xlabel: str, ylabel: str, colorbar: str, yticklabels=None) -> Figure:
    figure = Figure(figsize=(12, max(3.0, 0.3 * values.shape[0] + 1.5)))
    axes = figure.add_subplot()
    image = axes.imshow(values.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if yticklabels is not None:
        axes.set_yticks(range(len(yticklabels)), yticklabels)
    figure.colorbar(image, ax=axes, label=colorbar)
    return figure


def save_plots(trace: dict, output_dir: Path) -> list[Path]:
    read_attention = trace["read_attention"]
    num_segments, num_layers, num_heads, m = read_attention.shape
    uniform_share = torch.tensor([m / tokens for tokens in trace["real_tokens"]])
    per_head = read_attention.sum(-1).reshape(num_segments, num_layers * num_heads).T / uniform_share
    head_labels = [f"L{layer} H{head}" for layer in range(num_layers) for head in range(num_heads)]
    figures = {
        "read_attention_heatmap.png": heatmap(
            read_attention.mean((1, 2)).T, f"Attention share on each READ token ({num_segments} segments)",
            "segment", "READ slot", "share of the tokens' attention"),
        "read_attention_per_head.png": heatmap(
            per_head, "Attention on the READ tokens per head, relative to a uniform share (1 = uniform)",
            "segment", "layer / head", "attention share / uniform share", head_labels),
        "memory_slot_updates.png": heatmap(
            trace["slot_updates"].T, "How much each slot's READ value changes after the segment", "segment",
            "memory slot", "||new - old|| / ||old||"),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in figures.items():
        figure.savefig(output_dir / name, dpi=110, bbox_inches="tight")
        paths.append(output_dir / name)
    return paths


def main(argv=None):
    args = parse_args(argv)
    if args.model_path:
        model = AutoModelForQuestionAnswering.from_pretrained(args.model_path)
        tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    else:
        model, tokenizer = tiny_model(args)
    if not getattr(model.config, "memory_num_tokens", 0):
        raise ValueError(f"{args.model_path} has no memory (memory_num_tokens=0). Fix: pass a memory checkpoint.")
    model.eval()
    document = load_document(args, tokenizer, model.config)
    trace = trace_memory(model, document)
    output_dir = Path(args.output_dir)
    paths = save_plots(trace, output_dir)

    read_attention = trace["read_attention"]
    m = read_attention.shape[-1]
    mean_share = read_attention.sum(-1).mean((1, 2))  # per segment, over layers and heads
    report = {
        "model": args.model_path or "tiny untrained MemXLNet",
        "memory_impl": getattr(model.config, "memory_impl", None),
        "model_type": model.config.model_type,
        "memory_num_tokens": m,
        "segments": read_attention.shape[0],
        "read_attention_share_per_segment": mean_share.tolist(),
        "uniform_share_per_segment": [m / tokens for tokens in trace["real_tokens"]],
        "read_attention_per_slot": read_attention.mean((0, 1, 2)).tolist(),
        "read_attention_per_layer_head": read_attention.sum(-1).mean(0).tolist(),
        "slot_update_per_slot": trace["slot_updates"].mean(0).tolist(),
        "slot_update_per_segment": trace["slot_updates"].mean(1).tolist(),
    }
    (output_dir / "memory_analysis.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['segments']} segments, {m} READ tokens ({report['model_type']}, {report['memory_impl']})")
    uniform = m / max(trace["real_tokens"])
    print(f"attention share on READ tokens: mean {mean_share.mean():.4f} (uniform {uniform:.4f}); "
          f"busiest slot {int(read_attention.mean((0, 1, 2)).argmax())}")
    print(f"mean relative slot update per segment: {trace['slot_updates'].mean():.3f}")
    for path in [*paths, output_dir / "memory_analysis.json"]:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
