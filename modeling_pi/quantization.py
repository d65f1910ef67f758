"""Weight-only quantization of the three transformer stacks, through torchao: `quantize_weights`.

The vision tower, the language model and the action expert hold nearly all of a π model's weights; their
linears' weights become int8 (or int4) with per-channel (per-group) scales, and their activations stay in
the model's dtype (`optimize_for_cpu` leaves quantized linears to torchao's kernels). The flow head (state, action
and time projections, adaRMS modulation) and π0-FAST's output head keep their precision, as the reference keeps the
flow head in float32. torchao does the quantizing and
the kernels; what is ours is the choice of modules. The same is reachable through transformers:
`AutoModel.from_pretrained(folder, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))` quantizes
every linear but the flow head's and the modulation's (`_keep_in_fp32_modules_strict`) instead.

int4 needs a kernel torchao has for the device (on CUDA, its `mslk` package); int8 runs everywhere. A
quantized model samples and decodes as before; `save_pretrained` refuses it (save the float weights and
quantize after loading), where the transformers path saves quantized.
"""

import torch
from torch import nn

STACKS = ("vision_tower", "language_model", "action_expert")
WEIGHT_BITS = ("int8", "int4")
INT4_GROUP_SIZE = 128


def torchao_config(bits: str, group_size: int = INT4_GROUP_SIZE):
    """torchao's weight-only config for `bits` ("int8": per output channel; "int4": per `group_size` inputs)."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError as err:
        raise ImportError("Weight quantization needs torchao: pip install torchao (or this project's [quant] extra).") from err
    if bits == "int8":
        return Int8WeightOnlyConfig()
    if bits == "int4":
        return Int4WeightOnlyConfig(group_size=group_size)
    raise ValueError(f"Unknown weight format {bits!r}; expected one of {', '.join(WEIGHT_BITS)}.")


def quantize_weights(model: nn.Module, bits: str = "int8", group_size: int = INT4_GROUP_SIZE) -> list[str]:
    """Quantizes, in place, the weights of every plain linear of the vision tower, the language model and the
    action expert but the adaRMS modulation (the model's `_keep_in_fp32_modules_strict`); returns their names.
    Raises where torchao has no kernel for `bits` on the model's device."""
    from torchao.quantization import quantize_

    config = torchao_config(bits, group_size)
    kept = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())  # the flow head and adaRMS modulation
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.split(".")[0] in STACKS and kept.isdisjoint(name.split("."))
             and not is_quantized(module.weight)]
    chosen = set(names)
    try:
        quantize_(model, config, filter_fn=lambda module, name: name in chosen)
    except (ImportError, NotImplementedError, ValueError, RuntimeError) as err:
        device = next(model.parameters()).device
        raise RuntimeError(f"torchao cannot quantize weights to {bits} on {device.type} here: {err}") from err
    if names:
        model._weights_quantized_in_place = True  # `PiForActionGeneration.save_pretrained` refuses to save them
    return names


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether `weight` is a quantized tensor (torchao's subclasses) rather than a plain one."""
    return type(weight) not in (torch.Tensor, nn.Parameter)
