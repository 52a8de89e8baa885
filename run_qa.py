#!/usr/bin/env python
"""Fine-tune or train from scratch a memory QA model (MemXLNet) on SQuAD-v2-style long documents.

The flags follow the official `examples/pytorch/question-answering/run_qa.py`, plus the memory options of
`hf_memory.training.MemoryArguments`. Every question becomes one document of up to `max_n_segs` segments that the
model reads in order, carrying its memory. Examples:

    python run_qa.py --train_file train-v2.0.json --validation_file dev-v2.0.json --version_2_with_negative \
        --config_overrides "d_model=128,n_layer=2,n_head=4,d_inner=256" --train_tokenizer_vocab_size 8000 \
        --memory_num_tokens 8 --max_seq_length 256 --doc_stride 64 --do_train --do_eval --output_dir out
    python run_qa.py args.yaml          # the same arguments as a JSON or YAML file
    torchrun --nproc_per_node 2 run_qa.py ... --use_cpu True          # CPU DDP
"""

import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field

import datasets
import torch
import transformers
import yaml
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    EvalPrediction,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)

from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering, add_memory_tokens, train_xlnet_tokenizer
from hf_memory.data import SegmentCollator, load_raw_datasets, preprocess_qa_dataset
from hf_memory.evaluation import load_squad_v2_metric, postprocess_and_save
from hf_memory.training import (
    FreezeBaseWarmupCallback,
    GlobalSoftmaxWarmupCallback,
    MemoryArguments,
    MemoryTrainer,
    ProgressiveSegmentsCallback,
)
from hf_memory.training.arguments import (
    GMM_OPTIONS,
    check_model_paths,
    checkpoint_in_output_dir,
    skip_pin_memory_on_cpu,
)
from hf_memory.training.gmm_callbacks import RoutingStatisticsCallback

logger = logging.getLogger(__name__)
DEFAULT_MEMORY_TOKENS = 8


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint to start from; leave empty to train from scratch (model_type)."}
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path if not the model's."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "From scratch only: config fields to override, e.g. 'd_model=128,n_layer=2,n_head=4'."},
    )
    train_tokenizer_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Without tokenizer_name/model_name_or_path: train an XLNet tokenizer of this size on the "
                  "training data."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the stored login)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from Hub checkpoints."})


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset in the squad_v2 schema."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "SQuAD-format JSON training file."})
    validation_file: str | None = field(default=None, metadata={"help": "SQuAD-format JSON evaluation file."})
    test_file: str | None = field(default=None, metadata={"help": "SQuAD-format JSON prediction file."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into a non-empty --output_dir instead of resuming from its last checkpoint."},
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the preprocessing."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})
    max_seq_length: int = field(default=384, metadata={"help": "Tokens per segment (memory tokens included)."})
    pad_to_max_length: bool = field(
        default=True,
        metadata={"help": "Kept for compatibility: segments are always padded to max_seq_length (False warns)."},
    )
    max_query_length: int = field(default=64, metadata={"help": "Longer questions are truncated (counted)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the prediction set."})
    version_2_with_negative: bool = field(default=False, metadata={"help": "Some questions have no answer."})
    null_score_diff_threshold: float = field(
        default=0.0, metadata={"help": "Predict no answer when null score - best span score exceeds this."}
    )
    doc_stride: int = field(default=128, metadata={"help": "Overlapping context tokens between segments."})
    n_best_size: int = field(default=20, metadata={"help": "Candidate spans kept per document."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer in tokens."})

    def __post_init__(self):
        if self.dataset_name is None and not (self.train_file or self.validation_file or self.test_file):
            raise ValueError("No data. Fix: pass --dataset_name or --train_file/--validation_file/--test_file.")
        for name in ("train_file", "validation_file", "test_file"):
            path = getattr(self, name)
            if path is not None and not path.endswith((".json", ".jsonl")):
                raise ValueError(f"--{name} {path!r} must be a SQuAD-format .json (or .jsonl) file.")


def yaml_to_argv(path: str) -> list[str]:
    """YAML mapping -> command-line flags, so values get the command line's types ("1e-3" is a str in YAML)."""
    with open(path, encoding="utf-8") as handle:
        options = yaml.safe_load(handle) or {}
    if not isinstance(options, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values (like the command-line flags).")
    argv = []
    for key, value in options.items():
        argv += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return argv


def parse_arguments(argv: list[str]):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, MemoryArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_args_into_dataclasses(args=yaml_to_argv(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def model_classes(model_type: str):
    """(config class, QA model class) of a model type; the GMM classes come from their own module."""
    if model_type == "gmmxlnet":
        try:
            from hf_memory.models.memxlnet.configuration_memxlnet import GMMXLNetConfig
            from hf_memory.models.memxlnet.modeling_gmmxlnet import GMMXLNetForQuestionAnswering
        except ImportError as error:
            raise ValueError(f"model_type='gmmxlnet' is not available in this installation ({error}).") from None
        return GMMXLNetConfig, GMMXLNetForQuestionAnswering
    return MemXLNetConfig, MemXLNetForQuestionAnswering


def train_tokenizer(model_args, data_args, raw_datasets, memory_args):
    """An XLNet-style tokenizer trained on the training split (or the first split given)."""
    if not model_args.train_tokenizer_vocab_size:
        raise ValueError(
            "No tokenizer: training from scratch needs --tokenizer_name or --train_tokenizer_vocab_size N."
        )
    split = "train" if "train" in raw_datasets else next(iter(raw_datasets))
    with tempfile.TemporaryDirectory() as folder:
        corpus = os.path.join(folder, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as handle:
            for context in sorted(set(raw_datasets[split]["context"])):
                handle.write(context + "\n")
            for question in raw_datasets[split]["question"]:
                handle.write(question + "\n")
        return train_xlnet_tokenizer(
            [corpus], vocab_size=model_args.train_tokenizer_vocab_size, model_max_length=data_args.max_seq_length
        )


def parse_config_overrides(config_class, overrides: str) -> dict:
    """`"d_model=128,n_layer=2"` -> typed kwargs, passed at construction so derived fields (d_head) follow."""
    parsed = config_class()
    parsed.update_from_string(overrides)
    return {pair.split("=", 1)[0].strip(): getattr(parsed, pair.split("=", 1)[0].strip()) for pair in overrides.split(",")}


def with_new_memory_class(model, config_class, model_class, tokenizer, memory_num_tokens, memory_options):
    """A no-memory checkpoint as another memory architecture (e.g. GMMXLNet): its XLNet weights, fresh memory."""
    read_ids, write_ids = add_memory_tokens(tokenizer, memory_num_tokens)
    fields = {key: value for key, value in model.config.to_dict().items()
              if key not in ("model_type", "architectures", "auto_map", "transformers_version")}
    config = config_class.from_dict({
        **fields, **memory_options, "vocab_size": max(len(tokenizer), model.config.vocab_size),
        "memory_num_tokens": memory_num_tokens, "mem_read_token_ids": read_ids, "mem_write_token_ids": write_ids,
    })
    model.resize_token_embeddings(config.vocab_size, mean_resizing=False)
    converted = model_class(config)
    missing, unexpected = converted.load_state_dict(model.state_dict(), strict=False)
    missing = [name for name in missing if not name.startswith("memory.")]
    if unexpected or missing:
        raise ValueError(f"Cannot convert the checkpoint to {config_class.model_type}: unexpected weights "
                         f"{unexpected}, missing weights {missing}.")
    return converted


def build_model(model_args, memory_args, tokenizer):
    """Load a checkpoint (adding memory when asked) or build a model from scratch; tokenizer gets memory tokens."""
    config_class, model_class = model_classes(memory_args.model_type)
    memory_options = {
        name: getattr(memory_args, name)
        for name in ("memory_update", "memory_init", "memory_impl", "reading_order", *GMM_OPTIONS)
        if getattr(memory_args, name) is not None
    }
    requested = 0 if memory_args.model_type == "xlnet" else memory_args.memory_num_tokens
    hub = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    if model_args.model_name_or_path:
        if model_args.config_overrides:
            raise ValueError("--config_overrides only applies when training from scratch (no --model_name_or_path).")
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code,
            **hub,
        )
        if config.model_type == "xlnet":  # a plain XLNet checkpoint: same weights inside our model class
            model = model_class.from_pretrained(model_args.model_name_or_path, **hub)
        else:
            model = AutoModelForQuestionAnswering.from_pretrained(
                model_args.model_name_or_path, config=config, trust_remote_code=model_args.trust_remote_code, **hub
            )
        current = getattr(model.config, "memory_num_tokens", 0)
        if requested and current == 0 and not isinstance(model, model_class):
            logger.info("Building a %s model with %d memory tokens from the no-memory checkpoint %s.",
                        memory_args.model_type, requested, model_args.model_name_or_path)
            return with_new_memory_class(model, config_class, model_class, tokenizer, requested, memory_options)
        if requested and current == 0:
            logger.info("Adding %d memory tokens to the no-memory checkpoint %s.", requested,
                        model_args.model_name_or_path)
            model.enable_memory(requested, tokenizer, **memory_options)
        elif requested is not None and requested != current:
            raise ValueError(
                f"The checkpoint has memory_num_tokens={current} but --memory_num_tokens {requested} was given. "
                "Fix: drop --memory_num_tokens, or start from a no-memory checkpoint to add memory."
            )
        conflicting = [name for name, value in memory_options.items() if getattr(model.config, name, value) != value]
        if current and conflicting:
            name = conflicting[0]
            raise ValueError(
                f"--{name} {memory_options[name]} differs from the checkpoint's "
                f"{name}={getattr(model.config, name)!r}: memory options apply when memory is added to a model. "
                f"Fix: drop --{name}, or start from a no-memory checkpoint."
            )
        return model
    if requested is None:
        requested = DEFAULT_MEMORY_TOKENS
    read_ids, write_ids = add_memory_tokens(tokenizer, requested) if requested else (None, None)
    config_kwargs = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "memory_num_tokens": requested,
        "mem_read_token_ids": read_ids,
        "mem_write_token_ids": write_ids,
        **memory_options,
    }
    if model_args.config_overrides:
        logger.info("Overriding config: %s", model_args.config_overrides)
        config_kwargs.update(parse_config_overrides(config_class, model_args.config_overrides))
    if model_args.config_name:
        config = AutoConfig.from_pretrained(model_args.config_name, **hub, **config_kwargs)
    else:
        config = config_class(**config_kwargs)
    logger.info("Training a new %s model from scratch.", memory_args.model_type)
    return model_class(config)


def check_tokenizer_matches(model, tokenizer):
    """The segments must use the memory token ids the model looks for."""
    m = getattr(model.config, "memory_num_tokens", 0)
    if not m:
        return [], []
    read_ids, write_ids = model.config.mem_read_token_ids, model.config.mem_write_token_ids
    vocab = tokenizer.get_vocab()
    if [vocab.get(f"[MEM_READ_{i}]") for i in range(m)] != read_ids or [
        vocab.get(f"[MEM_WRITE_{i}]") for i in range(m)
    ] != write_ids:
        raise ValueError(
            "The tokenizer's memory token ids differ from the model's config (mem_read_token_ids/"
            "mem_write_token_ids). Fix: use the tokenizer saved with the checkpoint."
        )
    return read_ids, write_ids


def select(dataset, limit):
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def main(argv: list[str] | None = None):
    model_args, data_args, memory_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    skip_pin_memory_on_cpu(training_args)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for module_logger in (logger, logging.getLogger("hf_memory")):
        module_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.warning(
        "Process rank: %s, device: %s, world size: %s, distributed: %s", training_args.process_index,
        training_args.device, training_args.world_size, training_args.parallel_mode.value,
    )
    if not data_args.pad_to_max_length:
        logger.warning(
            "--pad_to_max_length False has no effect: every segment is padded to --max_seq_length (%d), because the "
            "segments of a document are batched time-step-major with memory carried between them. Lower "
            "--max_seq_length for shorter segments.", data_args.max_seq_length,
        )
    check_model_paths(model_args)
    last_checkpoint = checkpoint_in_output_dir(training_args, data_args.overwrite_output_dir)
    set_seed(training_args.seed)

    data_files = {
        split: path
        for split, path in (
            ("train", data_args.train_file), ("validation", data_args.validation_file), ("test", data_args.test_file)
        )
        if path
    }
    with training_args.main_process_first(desc="loading data"):
        raw_datasets = load_raw_datasets(
            data_args.dataset_name, data_args.dataset_config_name, data_files, model_args.cache_dir, model_args.token
        )

    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    if tokenizer_source:
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_source, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
            token=model_args.token, trust_remote_code=model_args.trust_remote_code,
        )
    else:
        with training_args.main_process_first(desc="training the tokenizer"):
            tokenizer = train_tokenizer(model_args, data_args, raw_datasets, memory_args)
    model = build_model(model_args, memory_args, tokenizer)
    if training_args.do_train:  # the loss decides where the no-answer score lives; inference reads it from the config
        model.config.null_score_reduction = memory_args.null_score_reduction
    read_ids, write_ids = check_tokenizer_matches(model, tokenizer)

    segmenting = {
        "max_seq_length": data_args.max_seq_length,
        "doc_stride": data_args.doc_stride,
        "max_n_segs": memory_args.max_n_segs,
        "max_query_length": data_args.max_query_length,
        "memory_read_ids": read_ids,
        "memory_write_ids": write_ids,
        "num_proc": data_args.preprocessing_num_workers,
        "load_from_cache_file": not data_args.overwrite_cache,
    }
    splits = {}
    for split, needed, limit in (
        ("train", training_args.do_train, data_args.max_train_samples),
        ("validation", training_args.do_eval, data_args.max_eval_samples),
        ("test", training_args.do_predict, data_args.max_predict_samples),
    ):
        if not needed:
            continue
        if split not in raw_datasets:
            raise ValueError(f"--do_{'eval' if split == 'validation' else split} needs a {split} split or file.")
        examples = select(raw_datasets[split], limit)
        with training_args.main_process_first(desc=f"segmenting {split}"):
            splits[split] = (examples, preprocess_qa_dataset(examples, tokenizer, split=split, **segmenting))

    metric = load_squad_v2_metric()

    def post_process(examples, features, predictions, stage="eval"):
        result = postprocess_and_save(
            examples, features, predictions,
            cls_token_id=tokenizer.cls_token_id,
            version_2_with_negative=data_args.version_2_with_negative,
            n_best_size=data_args.n_best_size,
            max_answer_length=data_args.max_answer_length,
            null_score_diff_threshold=data_args.null_score_diff_threshold,
            null_score_reduction=model.config.null_score_reduction,
            reading_order=model.config.reading_order,
            output_dir=training_args.output_dir,
            prefix=stage,
        )
        predictions = result["metric_predictions"]
        if not data_args.version_2_with_negative:
            predictions = [{**p, "no_answer_probability": 0.0} for p in predictions]
        return EvalPrediction(predictions=predictions, label_ids=result.get("references"))

    def compute_metrics(prediction: EvalPrediction):
        threshold = data_args.null_score_diff_threshold if data_args.version_2_with_negative else 1.0
        scores = metric.compute(
            predictions=prediction.predictions, references=prediction.label_ids, no_answer_threshold=threshold
        )
        if not data_args.version_2_with_negative:  # the official script's `squad` metric names this `exact_match`
            scores["exact_match"] = scores["exact"]
        return scores

    collator = SegmentCollator(tokenizer.pad_token_id, tokenizer.cls_token_id, reading_order=model.config.reading_order)
    trainer = MemoryTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"][1] if "train" in splits else None,
        eval_dataset=splits["validation"][1] if "validation" in splits else None,
        eval_examples=splits["validation"][0] if "validation" in splits else None,
        processing_class=tokenizer,
        data_collator=collator,
        post_process_function=post_process,
        compute_metrics=compute_metrics,
        bptt_depth=memory_args.bptt_depth,
        use_global_softmax=memory_args.use_global_softmax,
    )
    if memory_args.progressive_schedule:
        trainer.add_callback(ProgressiveSegmentsCallback(trainer, memory_args.progressive_schedule))
    if memory_args.warmup_freeze_base_epochs:
        trainer.add_callback(FreezeBaseWarmupCallback(model, memory_args.warmup_freeze_base_epochs))
    if memory_args.use_global_softmax and memory_args.warmup_disable_global_softmax_epochs:
        trainer.add_callback(GlobalSoftmaxWarmupCallback(trainer, memory_args.warmup_disable_global_softmax_epochs))
    if memory_args.model_type == "gmmxlnet":
        trainer.add_callback(RoutingStatisticsCallback(trainer))

    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        metrics = train_result.metrics
        metrics["train_samples"] = len(splits["train"][1])
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(splits["validation"][1])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.do_predict:
        examples, features = splits["test"]
        results = trainer.predict(features, examples)
        metrics = results.metrics
        metrics["predict_samples"] = len(features)
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)

    card = {"tasks": "question-answering", "tags": ["memory", memory_args.model_type]}
    if data_args.dataset_name is not None:
        card["dataset_tags"] = card["dataset"] = data_args.dataset_name
    if model_args.model_name_or_path:
        card["finetuned_from"] = model_args.model_name_or_path
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)


if __name__ == "__main__":
    main()
    if torch.distributed.is_initialized():  # torchrun: gloo's threads can abort the interpreter's exit otherwise
        torch.distributed.barrier()  # no rank tears its pairs down while another still writes or communicates
        torch.distributed.destroy_process_group()
