from .configuration_memxlnet import MemXLNetConfig
from .modeling_memxlnet import (
    MemXLNetForQuestionAnswering,
    MemXLNetModel,
    MemXLNetModelOutput,
    MemXLNetPreTrainedModel,
    MemXLNetQuestionAnsweringOutput,
)
