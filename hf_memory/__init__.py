"""hf_memory: memory-augmented transformers for the Hugging Face ecosystem.

Importing the package registers every model with the transformers Auto classes, so `AutoConfig`,
`AutoModel` and the task Auto classes resolve our `model_type`s without `trust_remote_code`, and makes PEFT's
adapter loaders name `MemoryAdapterModel.from_pretrained` when given a memory adapter folder.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .adapters import MemoryAdapterConfig, MemoryAdapterModel, create_memory_optimizer, get_memory_model
from .models.memory_transformer import (
    MemoryTransformerConfig,
    MemoryTransformerForCausalLM,
    MemoryTransformerForSequenceClassification,
    MemoryTransformerForTokenClassification,
    MemoryTransformerModel,
)
from .models.memxlnet import (
    GMMXLNetConfig,
    GMMXLNetForQuestionAnswering,
    GMMXLNetPreTrainedModel,
    GMMXLNetQuestionAnsweringOutput,
    MemXLNetConfig,
    MemXLNetForQuestionAnswering,
    MemXLNetModel,
    MemXLNetModelOutput,
    MemXLNetPreTrainedModel,
    MemXLNetQuestionAnsweringOutput,
    gmm_balanced_config,
    gmm_large_config,
    gmm_small_config,
)
from .models.memxlnet.pipeline_question_answering import MemXLNetQuestionAnsweringPipeline
from .tokenization import add_memory_tokens, get_memory_token_ids, train_causal_lm_tokenizer, train_xlnet_tokenizer

__version__ = "0.1.0"


def _register_auto_classes():
    AutoConfig.register(MemXLNetConfig.model_type, MemXLNetConfig, exist_ok=True)
    AutoModel.register(MemXLNetConfig, MemXLNetModel, exist_ok=True)
    AutoModelForQuestionAnswering.register(MemXLNetConfig, MemXLNetForQuestionAnswering, exist_ok=True)
    # save_pretrained then writes auto_map and copies the flat model code next to the weights.
    MemXLNetConfig.register_for_auto_class()
    MemXLNetModel.register_for_auto_class("AutoModel")
    MemXLNetForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")
    AutoConfig.register(GMMXLNetConfig.model_type, GMMXLNetConfig, exist_ok=True)
    AutoModelForQuestionAnswering.register(GMMXLNetConfig, GMMXLNetForQuestionAnswering, exist_ok=True)
    GMMXLNetConfig.register_for_auto_class()
    GMMXLNetForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")
    AutoConfig.register(MemoryTransformerConfig.model_type, MemoryTransformerConfig, exist_ok=True)
    AutoModel.register(MemoryTransformerConfig, MemoryTransformerModel, exist_ok=True)
    AutoModelForCausalLM.register(MemoryTransformerConfig, MemoryTransformerForCausalLM, exist_ok=True)
    AutoModelForSequenceClassification.register(
        MemoryTransformerConfig, MemoryTransformerForSequenceClassification, exist_ok=True
    )
    AutoModelForTokenClassification.register(
        MemoryTransformerConfig, MemoryTransformerForTokenClassification, exist_ok=True
    )


_register_auto_classes()


def __getattr__(name: str):
    """`MemoryAdapterTrainer` is imported on first use: importing transformers' Trainer costs half a second."""
    if name == "MemoryAdapterTrainer":
        from . import adapters

        return adapters.MemoryAdapterTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
