#!/usr/bin/env python
"""Train and evaluate causal language models (MemoryTransformer or any `AutoModelForCausalLM`) with the Trainer.

Flags follow transformers' official `examples/pytorch/language-modeling/run_clm.py`, plus:
`--train_tokenizer_vocab_size N` (train a byte-level BPE tokenizer on the training text when no tokenizer is given),
`--memory_learning_rate` (separate optimizer group for memory banks/blocks/routers) and router statistics in the logs.
Arguments come from the command line or from a single `.json` / `.yaml` file.

    python run_clm.py --model_type memory_transformer --config_overrides "hidden_size=256,use_chapters=True" \
        --train_file ../shared/data/text/tinystories-valid-head.txt --train_tokenizer_vocab_size 4000 \
        --block_size 256 --do_train --do_eval --output_dir runs/clm --memory_learning_rate 1e-3
"""

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from itertools import chain

import datasets
import numpy as np
import torch
import transformers
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedModel,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from hf_memory.adapters.trainer import MemoryAdapterTrainer
from hf_memory.model_cards import TrainerModelCardMixin
from hf_memory.models.memory_transformer import (
    MemoryTransformerConfig,
    MemoryTransformerForCausalLM,
    MemoryTransformerModel,
    memory_router_statistics,
)
from hf_memory.tokenization import train_causal_lm_tokenizer
from hf_memory.training.arguments import check_model_paths, checkpoint_in_output_dir, skip_pin_memory_on_cpu

logger = logging.getLogger(__name__)

MEMORY_PARAMETER_MARKERS = ("memory_banks.", "memory_block.")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint to start from. Leave unset to train from scratch."}
    )
    model_type: str | None = field(
        default=None, metadata={"help": "Model type when training from scratch, e.g. memory_transformer or llama."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "From scratch only: 'key=value,...' config fields, e.g. 'hidden_size=256,use_chapters=True'."},
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache downloads from the Hub."})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Use a fast (tokenizers-backed) tokenizer."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub/folder."})
    dtype: str | None = field(
        default=None,
        metadata={"help": "dtype to load the model in (--torch_dtype, its name before transformers 5, also works).",
                  "choices": ["auto", "bfloat16", "float16", "float32"], "aliases": ["--torch_dtype"]},
    )
    train_tokenizer_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Without tokenizer_name/model_name_or_path: train a byte-level BPE of this size on the train text."},
    )

    def __post_init__(self):
        if self.config_overrides is not None and (self.config_name is not None or self.model_name_or_path is not None):
            raise ValueError("--config_overrides can't be used with --config_name or --model_name_or_path.")


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Dataset name for datasets.load_dataset."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Training data: .txt, .csv, .json or .jsonl."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Evaluation data: .txt, .csv, .json or .jsonl."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into a non-empty --output_dir instead of resuming from its last checkpoint."},
    )
    text_column_name: str | None = field(
        default=None, metadata={"help": "Column holding the text (default: 'text' if present, else the first column)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training blocks to this many."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation blocks to this many."})
    block_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per training block (default: the tokenizer's model_max_length, or min(1024, "
                  "max_position_embeddings) when that is longer); capped at model_max_length."},
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute cached preprocessing."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Share of the train split held out when there is no validation split."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep line breaks when reading .txt files."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the dataset as a stream (an IterableDataset: nothing downloaded or cached up front); "
                  "needs --max_steps, and --validation_file or a validation split for --do_eval."},
    )

    def __post_init__(self):
        if self.dataset_name is None and self.train_file is None and self.validation_file is None:
            raise ValueError("Need --dataset_name or --train_file/--validation_file.")
        for path in (self.train_file, self.validation_file):
            if path is not None and path.rsplit(".", 1)[-1] not in ("txt", "csv", "json", "jsonl"):
                raise ValueError(f"{path}: --train_file/--validation_file must be a .txt, .csv, .json or .jsonl file.")


@dataclass
class MemoryArguments:
    memory_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of memory banks, memory blocks and routers (default: --learning_rate)."},
    )
    memory_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Train a memory adapter on the frozen --model_name_or_path: 'default' (MemoryAdapterConfig()), or a "
            "directory / adapter_config.json of hf_memory.MemoryAdapterConfig. The adapter is saved in --output_dir."
        },
    )
    memory_adapter_overrides: str | None = field(
        default=None,
        metadata={"help": "Adapter hyper-parameters, e.g. 'num_memory_tokens=256,use_chapters=true,num_chapters=8'."},
    )
    lora_r: int | None = field(default=None, metadata={"help": "Also train PEFT LoRA of this rank (with --memory_adapter)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="q_proj,v_proj", metadata={"help": "Comma-separated LoRA targets."})


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataTrainingArguments, TrainingArguments, MemoryArguments]:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments, MemoryArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(yaml_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def register_memory_transformer() -> None:
    """Make `--model_type memory_transformer` and the Auto classes work whether or not `hf_memory` registered them."""
    if "memory_transformer" not in CONFIG_MAPPING:
        AutoConfig.register("memory_transformer", MemoryTransformerConfig)
        transformers.AutoModel.register(MemoryTransformerConfig, MemoryTransformerModel)
        AutoModelForCausalLM.register(MemoryTransformerConfig, MemoryTransformerForCausalLM)


def is_memory_parameter(name: str) -> bool:
    return any(marker in name for marker in MEMORY_PARAMETER_MARKERS)


class MemoryLMTrainer(TrainerModelCardMixin, MemoryAdapterTrainer):
    """Trainer with a separate learning rate for memory parameters and router statistics in the training logs; a
    memory adapter's checkpoints are adapter folders (`MemoryAdapterTrainer`)."""

    def __init__(self, *args, memory_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory_learning_rate = memory_learning_rate
        self._router_sums: dict[str, float] = {}
        self._router_steps = 0

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Four groups: (memory | base) x (decay | no decay). Memory banks are never weight-decayed."""
        opt_model = self.model if model is None else model
        if self.optimizer is not None or self.memory_learning_rate is None:
            return super().create_optimizer(model)
        decay_names = set(self.get_decay_parameter_names(opt_model))
        groups = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            memory = is_memory_parameter(name)
            decay = name in decay_names and "memory_banks." not in name
            groups.setdefault((memory, decay), []).append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decay else 0.0,
                "lr": self.memory_learning_rate if memory else self.args.learning_rate,
            }
            for (memory, decay), params in sorted(groups.items())
        ]
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        router_logits = outputs.get("router_logits") if isinstance(outputs, dict) else None
        if model.training and router_logits:
            self._accumulate_router_statistics(router_logits, inputs.get("attention_mask"))
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _accumulate_router_statistics(self, router_logits, attention_mask) -> None:
        top_k = self.model.config.top_k_chapters
        stats = memory_router_statistics(tuple(t.detach() for t in router_logits), top_k, attention_mask)
        fraction = stats["chapter_fraction"].clamp(min=1e-12)
        entropy = -(fraction * fraction.log()).sum(-1) / math.log(fraction.shape[-1])
        values = {
            "router_load_balance": stats["load_balance_loss"].item(),
            "router_z_loss": stats["z_loss"].item(),
            "router_usage_entropy": entropy.mean().item(),
            "router_max_chapter_fraction": stats["chapter_fraction"].max(-1).values.mean().item(),
        }
        for key, value in values.items():
            self._router_sums[key] = self._router_sums.get(key, 0.0) + value
        self._router_steps += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._router_steps:
            logs.update({key: round(total / self._router_steps, 4) for key, total in self._router_sums.items()})
            self._router_sums, self._router_steps = {}, 0
        super().log(logs, start_time)


def load_raw_datasets(data_args: DataTrainingArguments, model_args: ModelArguments) -> datasets.DatasetDict:
    if data_args.dataset_name is not None:
        raw = datasets.load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir, token=model_args.token,
            streaming=data_args.streaming,
        )
        builder, data_files, builder_kwargs = None, None, {}
    else:
        data_files = {}
        if data_args.train_file is not None:
            data_files["train"] = data_args.train_file
        if data_args.validation_file is not None:
            data_files["validation"] = data_args.validation_file
        extension = next(iter(data_files.values())).rsplit(".", 1)[-1]
        builder = {"txt": "text", "csv": "csv"}.get(extension, "json")
        builder_kwargs = {"keep_linebreaks": data_args.keep_linebreaks} if builder == "text" else {}
        raw = datasets.load_dataset(
            builder, data_files=data_files, cache_dir=model_args.cache_dir, streaming=data_args.streaming,
            **builder_kwargs,
        )
    if "validation" not in raw and "train" in raw and not data_args.streaming:
        # as the official script's train[:p%] / train[p%:]: the first p percent of the rows are held out
        held_out = round(len(raw["train"]) * data_args.validation_split_percentage / 100)
        if not 0 < held_out < len(raw["train"]):
            raise ValueError(
                f"--validation_split_percentage {data_args.validation_split_percentage} holds out {held_out} of the "
                f"{len(raw['train'])} training rows. Fix: choose a percentage that leaves rows on both sides, or pass "
                "--validation_file."
            )
        train = raw["train"]
        raw = datasets.DatasetDict({
            "train": train.select(range(held_out, len(train))), "validation": train.select(range(held_out)),
        })
    return raw


def build_config(model_args: ModelArguments):
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    if model_args.config_name:
        return AutoConfig.from_pretrained(model_args.config_name, trust_remote_code=model_args.trust_remote_code, **common)
    if model_args.model_name_or_path:
        return AutoConfig.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code, **common
        )
    if model_args.model_type is None:
        raise ValueError("Pass --model_name_or_path, --config_name or --model_type (e.g. memory_transformer).")
    config = CONFIG_MAPPING[model_args.model_type]()
    if model_args.config_overrides:
        logger.info(f"Overriding config: {model_args.config_overrides}")
        config.update_from_string(model_args.config_overrides)
        overridden = [item.split("=", 1)[0] for item in model_args.config_overrides.split(",")]
        # Rebuild so derived defaults (head_dim, num_key_value_heads, ...) follow the overrides and get validated.
        config = type(config)(**{key: getattr(config, key) for key in overridden})
    return config


def build_tokenizer(model_args: ModelArguments, raw_datasets: datasets.DatasetDict, text_column: str, output_dir: str):
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        return AutoTokenizer.from_pretrained(
            source, use_fast=model_args.use_fast_tokenizer, trust_remote_code=model_args.trust_remote_code, **common
        )
    if not model_args.train_tokenizer_vocab_size:
        raise ValueError("No tokenizer: pass --tokenizer_name, --model_name_or_path or --train_tokenizer_vocab_size N.")
    if "train" not in raw_datasets:
        raise ValueError("--train_tokenizer_vocab_size trains on the training text. Fix: pass --train_file.")
    texts = (example[text_column] for example in raw_datasets["train"])
    texts = (text for text in texts if text and text.strip())
    tokenizer = train_causal_lm_tokenizer([], model_args.train_tokenizer_vocab_size, texts=texts)
    tokenizer.save_pretrained(output_dir)
    logger.info(f"Trained a {len(tokenizer)}-token byte-level BPE tokenizer on the training text.")
    return tokenizer


def build_model(model_args: ModelArguments, memory_args: MemoryArguments, config, tokenizer) -> PreTrainedModel:
    """The one place that decides which model is trained (memory adapters / LoRA plug in here)."""
    if model_args.model_name_or_path:
        dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
            dtype=dtype,
        )
    else:
        config.vocab_size = len(tokenizer)
        config.pad_token_id, config.bos_token_id, config.eos_token_id = (
            tokenizer.pad_token_id,
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
        )
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
        n_params = sum(p.numel() for p in model.parameters())
        logger.info(f"Training a new model from scratch: {n_params / 2**20:.2f}M parameters")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    if memory_args.memory_adapter is not None or memory_args.lora_r is not None:
        from hf_memory.adapters.run_clm_support import build_memory_adapter_model

        return build_memory_adapter_model(model, model_args, memory_args)
    return model


def resolve_block_size(requested: int | None, tokenizer, config) -> int:
    """The official script's rule: by default the tokenizer's `model_max_length`, or `min(1024,
    max_position_embeddings)` when that is longer than the model's positions; a requested size is capped at
    `model_max_length`."""
    if requested is None:
        block_size = tokenizer.model_max_length
        max_positions = getattr(config, "max_position_embeddings", None)
        if max_positions is not None and block_size > max_positions:
            logger.warning(
                f"The tokenizer's model_max_length ({block_size}) is longer than the model's max_position_embeddings "
                f"({max_positions}); using block_size {min(1024, max_positions)}. Override with --block_size."
            )
            block_size = min(1024, max_positions)
        return block_size
    if requested > tokenizer.model_max_length:
        logger.warning(
            f"--block_size {requested} is longer than the tokenizer's model_max_length ({tokenizer.model_max_length}); "
            f"using block_size {tokenizer.model_max_length}."
        )
    return min(requested, tokenizer.model_max_length)


def tokenize_and_group(raw_datasets, tokenizer, text_column: str, block_size: int, data_args, training_args):
    def tokenize_function(examples):
        return tokenizer(examples[text_column])

    def group_texts(examples):
        concatenated = {key: list(chain(*examples[key])) for key in examples}
        total_length = (len(concatenated[next(iter(examples))]) // block_size) * block_size
        result = {
            key: [tokens[i : i + block_size] for i in range(0, total_length, block_size)]
            for key, tokens in concatenated.items()
        }
        result["labels"] = [list(block) for block in result["input_ids"]]
        return result

    column_names = dataset_columns(raw_datasets)
    if data_args.streaming:  # lazy: applied while the Trainer iterates
        return raw_datasets.map(tokenize_function, batched=True, remove_columns=column_names).map(
            group_texts, batched=True
        )
    with training_args.main_process_first(desc="tokenize and group"):
        tokenized = raw_datasets.map(
            tokenize_function,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=column_names,
            load_from_cache_file=not data_args.overwrite_cache,
            desc="Running tokenizer on dataset",
        )
        return tokenized.map(
            group_texts,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Grouping texts in chunks of {block_size}",
        )


def dataset_columns(raw_datasets) -> list[str]:
    """Column names of the first split; a stream whose features are not declared shows them in its first example."""
    dataset = next(iter(raw_datasets.values()))
    if dataset.column_names is not None:
        return dataset.column_names
    return list(next(iter(dataset)))


def limit(dataset, max_samples: int | None):
    """The first `max_samples` examples (`take` on a stream, `select` on a map-style dataset)."""
    if dataset is None or max_samples is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(max_samples)
    return dataset.select(range(min(len(dataset), max_samples)))


def preprocess_logits_for_metrics(logits, labels):
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def compute_metrics(eval_preds):
    """Next-token accuracy on non-ignored labels (computed locally; no Hub metric needed)."""
    predictions, labels = eval_preds
    labels, predictions = labels[:, 1:].reshape(-1), predictions[:, :-1].reshape(-1)
    keep = labels != -100
    return {"accuracy": float(np.mean(predictions[keep] == labels[keep]))}


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args, memory_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    skip_pin_memory_on_cpu(training_args)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    register_memory_transformer()
    check_model_paths(model_args)
    last_checkpoint = checkpoint_in_output_dir(training_args, data_args.overwrite_output_dir)
    set_seed(training_args.seed)
    os.makedirs(training_args.output_dir, exist_ok=True)

    raw_datasets = load_raw_datasets(data_args, model_args)
    for split, wanted in (("train", training_args.do_train), ("validation", training_args.do_eval)):
        if wanted and split not in raw_datasets:
            held_out = " (--streaming cannot hold out --validation_split_percentage of a stream)"
            raise ValueError(f"--do_{'train' if split == 'train' else 'eval'} needs a {split} split"
                             f"{held_out if data_args.streaming and split == 'validation' else ''}. Fix: pass "
                             f"--{split}_file or --dataset_name.")
    if data_args.streaming and training_args.do_train and training_args.max_steps <= 0:
        raise ValueError("--streaming has no length to derive the number of training steps from. Fix: pass --max_steps.")
    column_names = dataset_columns(raw_datasets)
    text_column = data_args.text_column_name or ("text" if "text" in column_names else column_names[0])
    config = build_config(model_args)
    tokenizer = build_tokenizer(model_args, raw_datasets, text_column, training_args.output_dir)
    model = build_model(model_args, memory_args, config, tokenizer)

    block_size = resolve_block_size(data_args.block_size, tokenizer, config)
    lm_datasets = tokenize_and_group(raw_datasets, tokenizer, text_column, block_size, data_args, training_args)
    train_dataset = limit(lm_datasets.get("train"), data_args.max_train_samples)
    eval_dataset = limit(lm_datasets.get("validation"), data_args.max_eval_samples)
    if not data_args.streaming:
        for split, dataset, wanted in (("train", train_dataset, training_args.do_train),
                                       ("validation", eval_dataset, training_args.do_eval)):
            if wanted and len(dataset) == 0:
                raise ValueError(
                    f"The {split} text is shorter than one block of --block_size {block_size} tokens, so it gives no "
                    "examples. Fix: lower --block_size or give more text."
                )

    trainer = MemoryLMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if training_args.do_eval else None,
        memory_learning_rate=memory_args.memory_learning_rate,
    )
    metrics = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
        trainer.save_model()
        train_metrics = dict(train_result.metrics)
        if not data_args.streaming:  # a stream has no length
            train_metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        metrics.update(train_metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        if not data_args.streaming:
            eval_metrics["eval_samples"] = len(eval_dataset)
        eval_metrics["perplexity"] = math.exp(eval_metrics["eval_loss"]) if eval_metrics["eval_loss"] < 700 else float("inf")
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    card_kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-generation"}
    if data_args.dataset_name is not None:
        card_kwargs["dataset"] = data_args.dataset_name
    if training_args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    else:
        trainer.create_model_card(**card_kwargs)
    return metrics


if __name__ == "__main__":
    main()
    if torch.distributed.is_initialized():  # torchrun: gloo's threads can abort the interpreter's exit otherwise
        torch.distributed.barrier()  # no rank tears its pairs down while another still writes or communicates
        torch.distributed.destroy_process_group()
