"""The π family in Transformers. Importing this package registers `model_type="pi"` with AutoConfig,
AutoModel and AutoProcessor."""

from transformers import AutoConfig, AutoModel, AutoProcessor

from configuration_pi import PiConfig
from processing_pi import PiProcessor

from .modeling_pi import PiFastOutput, PiFlowMatchingOutput, PiForActionGeneration, PiPreTrainedModel
from .robotics_pipeline import RoboticsPipeline  # noqa: F401  (registers the "robotics" pipeline task)

AutoConfig.register(PiConfig.model_type, PiConfig, exist_ok=True)
AutoModel.register(PiConfig, PiForActionGeneration, exist_ok=True)
AutoProcessor.register(PiConfig, PiProcessor, exist_ok=True)

__all__ = ["PiConfig", "PiFastOutput", "PiFlowMatchingOutput", "PiForActionGeneration", "PiPreTrainedModel"]
