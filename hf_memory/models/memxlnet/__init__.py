from .configuration_memxlnet import (
    GMMXLNetConfig,
    MemXLNetConfig,
    gmm_balanced_config,
    gmm_large_config,
    gmm_small_config,
)
from .modeling_gmmxlnet import GMMXLNetForQuestionAnswering, GMMXLNetPreTrainedModel, GMMXLNetQuestionAnsweringOutput
from .modeling_memxlnet import (
    MemXLNetForQuestionAnswering,
    MemXLNetModel,
    MemXLNetModelOutput,
    MemXLNetPreTrainedModel,
    MemXLNetQuestionAnsweringOutput,
)
