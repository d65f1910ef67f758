"""The π family in Transformers. Importing this package registers `model_type="pi"` with AutoConfig,
AutoModel and AutoProcessor, and the "robotics" task with `pipeline`: one import for the whole family, which
is why this file, and only this file, imports the processing and pipeline packages."""

from transformers import AutoConfig, AutoModel, AutoProcessor

import pipelines_pi  # noqa: F401  (registers the "robotics" pipeline task)
from configuration_pi import PiConfig
from processing_pi import PiProcessor

from .modeling_pi import PiComputeOptions, PiFastOutput, PiFlowMatchingOutput, PiForActionGeneration, PiPreTrainedModel

AutoConfig.register(PiConfig.model_type, PiConfig, exist_ok=True)
AutoModel.register(PiConfig, PiForActionGeneration, exist_ok=True)
AutoProcessor.register(PiConfig, PiProcessor, exist_ok=True)

__all__ = ["PiComputeOptions", "PiConfig", "PiFastOutput", "PiFlowMatchingOutput", "PiForActionGeneration",
           "PiPreTrainedModel"]
