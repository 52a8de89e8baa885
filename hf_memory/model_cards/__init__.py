"""Model cards with Hub metadata for every checkpoint hf_memory writes.

Templates (Jinja, one per model family) sit beside this file. The YAML header is built with huggingface_hub's
`ModelCardData`, so `model-index` follows the Hub's evaluation-results schema.
"""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_DIR = Path(__file__).parent
FAMILIES = {
    "memxlnet": ("memxlnet.md", "question-answering"),
    "gmmxlnet": ("gmmxlnet.md", "question-answering"),
    "memory_transformer": ("memory_transformer.md", "text-generation"),
    "memory_adapter": ("memory_adapter.md", "text-generation"),
}
# Metric names as the Hub's model-index expects them, for the keys our scripts write.
HUB_METRIC_TYPES = {"exact": "exact_match", "f1": "f1", "loss": "loss", "perplexity": "perplexity"}


def card_family(config) -> str | None:
    """Our model family a config belongs to, or None for models that get the generic card."""
    if getattr(config, "peft_type", None) == "MEMORY_ADAPTER":
        return "memory_adapter"
    # the class's type: a config read from another model's checkpoint may keep that checkpoint's `model_type`
    family = getattr(type(config), "model_type", None) or getattr(config, "model_type", None)
    return family if family in FAMILIES else None


def _family(config) -> str:
    family = card_family(config)
    if family is None:
        name = getattr(config, "model_type", None)
        raise ValueError(f"No model card template for {name!r}. Known families: {', '.join(FAMILIES)}.")
    return family


def render_model_card(
    config,
    model_id: str,
    *,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    eval_results: dict[str, float] | None = None,
    dataset_name: str | None = None,
    family: str | None = None,
    pipeline_tag: str | None = None,
) -> str:
    """The README.md text for a checkpoint: Hub metadata header, description, working usage snippets, metrics.
    `pipeline_tag` overrides the family's task (a task head such as sequence classification)."""
    family = family or _family(config)
    template, family_task = FAMILIES[family]
    pipeline_tag = pipeline_tag or family_task
    eval_results = {
        name.removeprefix("eval_"): round(float(value), 4)
        for name, value in (eval_results or {}).items()
        if isinstance(value, (int, float))
    }
    model_name = Path(model_id).name or model_id
    hub_results = [
        EvalResult(
            task_type=pipeline_tag,
            dataset_type=(datasets or ["custom"])[0],
            dataset_name=dataset_name or (datasets or ["custom"])[0],
            metric_type=HUB_METRIC_TYPES[name],
            metric_value=value,
        )
        for name, value in eval_results.items()
        if name in HUB_METRIC_TYPES
    ]
    card_data = ModelCardData(
        library_name="transformers" if family != "memory_adapter" else "hf_memory",
        pipeline_tag=pipeline_tag,
        tags=["hf_memory", family, "memory-augmented", "custom_code"],
        datasets=datasets,
        base_model=base_model,
        model_name=model_name,
        eval_results=hub_results or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_DIR / template),
        config=config,
        model_id=model_id,
        model_name=model_name,
        base_model=base_model,
        eval_results=eval_results,
        pipeline_tag=pipeline_tag,
    )
    return str(card)


def write_model_card(save_directory: str | Path, config, *, overwrite: bool = False, **card_info) -> Path | None:
    """Write README.md into `save_directory` unless one exists (a user's own card is never replaced)."""
    path = Path(save_directory) / "README.md"
    if path.exists() and not overwrite:
        return None
    card_info.setdefault("model_id", str(save_directory))
    card_info["base_model"] = _hub_id(card_info.get("base_model")) or _hub_id(_config_origin(config))
    path.write_text(render_model_card(config, **card_info), encoding="utf-8")
    return path


def _config_origin(config) -> str | None:
    return getattr(config, "base_model_name_or_path", None) or getattr(config, "_name_or_path", None)


def _hub_id(name: str | None) -> str | None:
    """A Hub id the checkpoint was fine-tuned from, never a local path (the Hub rejects those in metadata)."""
    if not name or Path(name).exists() or name.startswith((".", "/")):
        return None
    return name


class ModelCardMixin:
    """For our PreTrainedModels: `save_pretrained` writes a card, `push_to_hub` uploads it instead of a generic one.

    transformers' `push_to_hub` replaces README.md with a generic card right before the upload, so the card is
    rewritten (with the repo id in the usage snippets) at the last step, `_upload_modified_files`.
    `card_pipeline_tag` names the task of a head whose task differs from its family's (None: the family's).
    """

    card_pipeline_tag: str | None = None

    def _card_config(self):
        return self.config

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_card(save_directory, self._card_config(), pipeline_tag=self.card_pipeline_tag)

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        write_model_card(
            working_dir, self._card_config(), overwrite=True, model_id=repo_id, pipeline_tag=self.card_pipeline_tag
        )
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)


class TrainerModelCardMixin:
    """For Trainer subclasses: `create_model_card` (also run by `push_to_hub`) writes our family card with the
    latest evaluation metrics instead of the generic Trainer card."""

    def create_model_card(self, *, finetuned_from=None, dataset_tags=None, dataset=None, **kwargs):
        config = getattr(self.model, "peft_config", None) or self.model.config
        if card_family(config) is None:
            return super().create_model_card(
                finetuned_from=finetuned_from, dataset_tags=dataset_tags, dataset=dataset, **kwargs
            )
        if not self.is_world_process_zero():
            return
        evaluations = [entry for entry in self.state.log_history if any(k.startswith("eval_") for k in entry)]
        datasets = dataset_tags if isinstance(dataset_tags, list) else [dataset_tags or dataset] if (
            dataset_tags or dataset) else None
        write_model_card(
            self.args.output_dir,
            config,
            overwrite=True,
            model_id=self.args.hub_model_id or self.args.output_dir,
            base_model=finetuned_from,
            datasets=datasets,
            pipeline_tag=getattr(self.model, "card_pipeline_tag", None),
            eval_results={
                name: value for name, value in (evaluations[-1] if evaluations else {}).items()
                if name.startswith("eval_") and not name.endswith(("runtime", "per_second"))
            },
        )
