"""Fine-tuning π models with the Hugging Face stack (Trainer, PEFT). So far: LoRA presets and full fine-tuning."""

from .lora import LORA_PRESETS, apply_lora, lora_config, set_full_finetuning

__all__ = ["LORA_PRESETS", "apply_lora", "lora_config", "set_full_finetuning"]
