"""MemoryTransformer configuration: a Llama-style decoder whose layers can read a learnable memory bank.

Remote code: this file is copied next to checkpoints by `save_pretrained`, so it imports nothing from `hf_memory`.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

MEMORY_BANK_TYPES = ("standard", "factorized", "reduced_dim")
MEMORY_LAYER_PLACEMENTS = ("all", "first_k", "last_k", "every_n", "custom")
MEMORY_SHARING_MODES = ("shared", "per_layer", "every_k_layers")
MEMORY_BLOCK_VARIANTS = ("A", "B")


def derived_field_error(field: str, value, fix: str) -> ValueError:
    return ValueError(f"{field}={value!r} cannot be set: it is derived from the other fields. Fix: set {fix} instead.")


@strict
class MemoryTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of [`MemoryTransformerModel`] / [`MemoryTransformerForCausalLM`].

    The backbone uses Llama's field names and semantics (RMSNorm, RoPE, GQA self-attention, SwiGLU MLP). Memory layers
    add a cross-attention sublayer whose queries come from the token stream and whose keys/values come from a bank of
    `num_memory_tokens` learnable vectors. The bank can be split into `num_chapters` chapters of which each routing chunk
    reads only the `top_k_chapters` chosen by a causal router (plus `num_shared_chapters` always-on chapters).

    Backbone args:
        vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
        head_dim, hidden_act, max_position_embeddings, initializer_range, rms_norm_eps, use_cache, pad_token_id,
        bos_token_id, eos_token_id, tie_word_embeddings, attention_bias, attention_dropout, mlp_bias:
            As in `LlamaConfig`.
        rope_theta (`float`, defaults to 10000.0): base of the rotary position embedding.

    Memory args:
        vanilla_mode (`bool`, defaults to `False`):
            Build no memory at all: the plain Llama-style control model with identical backbone.
        num_memory_tokens (`int`, defaults to 1024): number of vectors per memory bank.
        memory_bank_type (`str`, defaults to `"standard"`):
            `"standard"`: a full `(num_memory_tokens, hidden_size)` matrix. `"factorized"`: `M = A B^T` with `A` of shape
            `(num_memory_tokens, memory_rank)` and `B` of shape `(hidden_size, memory_rank)`. `"reduced_dim"`: vectors of
            size `memory_rank`; memory attention then runs with head size `memory_rank // memory_num_attention_heads`.
        memory_rank (`int`, defaults to 64): rank of the factorized bank / width of the reduced_dim bank.
        memory_init_std (`float`, defaults to 0.02): standard deviation of the bank initialisation.
        memory_rms_norm (`bool`, defaults to `True`):
            Give every memory vector unit RMS (no gain) before the key/value projections, so the attention logits do not
            depend on the raw scale of the bank.
        memory_num_attention_heads, memory_num_key_value_heads (`int`, *optional*):
            Heads of the memory cross-attention; default to the backbone's `num_attention_heads` / `num_key_value_heads`.
        memory_dropout (`float`, defaults to 0.0): dropout on memory attention probabilities.
        zero_init_memory_output (`bool`, defaults to `True`):
            Zero-initialise the memory output projection so every memory sublayer is an exact no-op at initialisation.
        memory_layer_placement (`str`, defaults to `"all"`):
            Which decoder layers get a memory sublayer: `"all"`, `"first_k"` / `"last_k"` (`memory_layer_k` layers),
            `"every_n"` (layers `0, n, 2n, ...` with `n = memory_layer_n`) or `"custom"` (`memory_layer_indices`).
        memory_layer_k (`int`, defaults to 1), memory_layer_n (`int`, defaults to 2),
        memory_layer_indices (`list[int]`, *optional*): parameters of the placements above.
        memory_sharing (`str`, defaults to `"shared"`):
            `"shared"`: one bank for all memory layers; `"per_layer"`: one bank per memory layer; `"every_k_layers"`:
            consecutive groups of `memory_sharing_k` memory layers share a bank. Projections are always per layer.
        memory_sharing_k (`int`, defaults to 2): group size for `"every_k_layers"`.
        memory_block_variant (`str`, defaults to `"A"`):
            `"A"`: self-attention -> memory -> MLP. `"B"`: self-attention -> MLP -> memory -> second MLP.

    Chapter routing args:
        use_chapters (`bool`, defaults to `False`): split the bank into chapters and route.
        num_chapters (`int`, defaults to 16): chapters per bank; must divide `num_memory_tokens`.
        top_k_chapters (`int`, defaults to 4): routed chapters read by each routing chunk.
        num_shared_chapters (`int`, defaults to 0): the first chapters, always read with weight 1 and never routed.
        routing_chunk_size (`int`, defaults to 64):
            The chapter choice is made at positions `0, c, 2c, ...` (`c = routing_chunk_size`) from the mean of the
            routing queries of all non-padding tokens up to and including that position, and is kept for the chunk. It
            therefore never sees future tokens or padding, and generation with a KV cache routes exactly like a full
            forward. `1` routes every token from its own prefix.
        router_aux_loss_coef (`float`, defaults to 0.01): weight of the load-balance loss (1.0 when perfectly balanced).
        router_z_loss_coef (`float`, defaults to 0.001): weight of the router z-loss.
        output_router_logits (`bool`, defaults to `True`):
            Return router logits and, in training mode, add the weighted router losses to the loss (as Mixtral does).
    """

    model_type = "memory_transformer"
    # checkpoints this config is meant to start from (memory added to a pretrained Llama)
    upgradable_model_types = ("llama",)
    keys_to_ignore_at_inference = ["cache", "aux_loss", "router_logits"]

    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int = 1376
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False

    vanilla_mode: bool = False
    num_memory_tokens: int = 1024
    memory_bank_type: str = "standard"
    memory_rank: int = 64
    memory_init_std: float = 0.02
    memory_rms_norm: bool = True
    memory_num_attention_heads: int | None = None
    memory_num_key_value_heads: int | None = None
    memory_dropout: float = 0.0
    zero_init_memory_output: bool = True
    memory_layer_placement: str = "all"
    memory_layer_k: int = 1
    memory_layer_n: int = 2
    memory_layer_indices: list[int] | None = None
    memory_sharing: str = "shared"
    memory_sharing_k: int = 2
    memory_block_variant: str = "A"

    use_chapters: bool = False
    num_chapters: int = 16
    top_k_chapters: int = 4
    num_shared_chapters: int = 0
    routing_chunk_size: int = 64
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001
    output_router_logits: bool = True

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads > 0:  # else validate_architecture names the field
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.memory_num_attention_heads is None:
            self.memory_num_attention_heads = self.num_attention_heads
        if self.memory_num_key_value_heads is None:
            self.memory_num_key_value_heads = min(self.num_key_value_heads, self.memory_num_attention_heads)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        """A Llama checkpoint is read as a MemoryTransformer one: no "model of type `llama` to instantiate a model of
        type `memory_transformer`" warning, and `config.model_type` names what the model now is."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") in cls.upgradable_model_types:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    @property
    def memory_dim(self) -> int:
        """Width of the stored memory vectors."""
        return self.memory_rank if self.memory_bank_type == "reduced_dim" else self.hidden_size

    @memory_dim.setter
    def memory_dim(self, value):
        raise derived_field_error("memory_dim", value, "memory_rank with memory_bank_type='reduced_dim' (otherwise it is "
                                  "hidden_size)")

    @property
    def memory_head_dim(self) -> int:
        return self.memory_dim // self.memory_num_attention_heads

    @memory_head_dim.setter
    def memory_head_dim(self, value):
        raise derived_field_error("memory_head_dim", value, "memory_num_attention_heads (memory width / heads)")

    @property
    def tokens_per_chapter(self) -> int:
        return self.num_memory_tokens // self.num_chapters if self.use_chapters else self.num_memory_tokens

    @tokens_per_chapter.setter
    def tokens_per_chapter(self, value):
        raise derived_field_error("tokens_per_chapter", value, "num_memory_tokens and num_chapters")

    @property
    def num_routed_chapters(self) -> int:
        return self.num_chapters - self.num_shared_chapters

    @num_routed_chapters.setter
    def num_routed_chapters(self, value):
        raise derived_field_error("num_routed_chapters", value, "num_chapters and num_shared_chapters")

    def get_memory_layer_indices(self) -> list[int]:
        """Sorted indices of the decoder layers that have a memory sublayer (empty in vanilla mode)."""
        num_layers = self.num_hidden_layers
        if self.vanilla_mode:
            return []
        if self.memory_layer_placement == "all":
            return list(range(num_layers))
        if self.memory_layer_placement == "first_k":
            return list(range(min(self.memory_layer_k, num_layers)))
        if self.memory_layer_placement == "last_k":
            return list(range(max(num_layers - self.memory_layer_k, 0), num_layers))
        if self.memory_layer_placement == "every_n":
            return list(range(0, num_layers, self.memory_layer_n))
        return sorted(self.memory_layer_indices)

    def get_memory_bank_index(self, layer_idx: int) -> int:
        """Index of the bank read by decoder layer `layer_idx` (which must be a memory layer)."""
        order = self.get_memory_layer_indices().index(layer_idx)
        if self.memory_sharing == "shared":
            return 0
        if self.memory_sharing == "per_layer":
            return order
        return order // self.memory_sharing_k

    @property
    def num_memory_banks(self) -> int:
        layers = self.get_memory_layer_indices()
        return 0 if not layers else self.get_memory_bank_index(layers[-1]) + 1

    def validate_architecture(self):
        """Raise a ValueError naming the field for any inconsistent backbone or memory setting."""
        self._check_at_least_one("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})."
            )
        if self.vanilla_mode:
            return
        self._check_choice("memory_bank_type", MEMORY_BANK_TYPES)
        self._check_choice("memory_layer_placement", MEMORY_LAYER_PLACEMENTS)
        self._check_choice("memory_sharing", MEMORY_SHARING_MODES)
        self._check_choice("memory_block_variant", MEMORY_BLOCK_VARIANTS)
        self._check_at_least_one("num_memory_tokens", "memory_rank", "memory_layer_k", "memory_layer_n",
                                 "memory_sharing_k", "memory_num_attention_heads", "memory_num_key_value_heads")
        if not 0.0 <= self.memory_dropout < 1.0:
            raise ValueError(f"memory_dropout must be in [0, 1), got {self.memory_dropout}.")
        if not self.memory_init_std > 0:
            raise ValueError(f"memory_init_std must be > 0, got {self.memory_init_std}.")
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (a loss weight), got {getattr(self, name)}.")
        if self.memory_layer_placement == "custom":
            indices = self.memory_layer_indices
            if not indices:
                raise ValueError("memory_layer_indices must be a non-empty list when memory_layer_placement='custom'.")
            bad = [i for i in indices if not 0 <= i < self.num_hidden_layers]
            if bad or len(set(indices)) != len(indices):
                raise ValueError(
                    f"memory_layer_indices {indices} must be distinct layer indices in [0, {self.num_hidden_layers}) "
                    f"(num_hidden_layers={self.num_hidden_layers})."
                )
        elif self.memory_layer_indices is not None:
            raise ValueError(
                f"memory_layer_indices is only used with memory_layer_placement='custom', got placement "
                f"{self.memory_layer_placement!r}. Fix: drop memory_layer_indices or set the placement to 'custom'."
            )
        if self.memory_dim % self.memory_num_attention_heads != 0:
            raise ValueError(
                f"The memory width ({self.memory_dim}: hidden_size, or memory_rank for a reduced_dim bank) must be "
                f"divisible by memory_num_attention_heads ({self.memory_num_attention_heads})."
            )
        if self.memory_num_attention_heads % self.memory_num_key_value_heads != 0:
            raise ValueError(
                f"memory_num_attention_heads ({self.memory_num_attention_heads}) must be divisible by "
                f"memory_num_key_value_heads ({self.memory_num_key_value_heads})."
            )
        if not self.use_chapters:
            return
        if self.num_chapters < 1 or self.num_memory_tokens % self.num_chapters != 0:
            raise ValueError(
                f"num_memory_tokens ({self.num_memory_tokens}) must be divisible by num_chapters ({self.num_chapters})."
            )
        if not 0 <= self.num_shared_chapters < self.num_chapters:
            raise ValueError(
                f"num_shared_chapters ({self.num_shared_chapters}) must be in [0, num_chapters={self.num_chapters})."
            )
        if not 1 <= self.top_k_chapters <= self.num_routed_chapters:
            raise ValueError(
                f"top_k_chapters ({self.top_k_chapters}) must be in [1, num_chapters - num_shared_chapters = "
                f"{self.num_routed_chapters}]."
            )
        self._check_at_least_one("routing_chunk_size")

    def _check_at_least_one(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}.")


__all__ = ["MemoryTransformerConfig"]
