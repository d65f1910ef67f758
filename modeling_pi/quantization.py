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

import warnings

import torch
from torch import nn
from torch.distributed.tensor import DTensor

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
    action expert but the adaRMS modulation (the model's `_keep_in_fp32_modules_strict`); returns the names of those
    torchao quantized. Raises where torchao has no kernel for `bits` on the model's device, or quantized none; warns
    where it left some (int4 skips a linear whose input width `group_size` does not divide)."""
    from torchao.quantization import quantize_

    if bits == "int4" and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be a whole number of input features, at least 1, got {group_size!r}.")
    config = torchao_config(bits, group_size)
    kept = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())  # the flow head and adaRMS modulation
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.split(".")[0] in STACKS and kept.isdisjoint(name.split("."))
             and not is_quantized(module.weight)]
    if not names:
        raise ValueError("No linear of the model is left to quantize: its weights are quantized already. Quantize the "
                         "float model instead.")
    chosen = set(names)
    try:
        quantize_(model, config, filter_fn=lambda module, name: name in chosen)
    except (ImportError, NotImplementedError, ValueError, RuntimeError) as err:
        device = next(model.parameters()).device
        raise RuntimeError(f"torchao cannot quantize weights to {bits} on {device.type} here: {err}") from err
    left = [name for name in names if not is_quantized(model.get_submodule(name).weight)]  # torchao skips some
    done = [name for name in names if name not in left]
    why = f" (for int4, those whose input width group_size {group_size} does not divide)" if bits == "int4" else ""
    if left and not done:
        raise ValueError(f"torchao quantized none of the {len(left)} linears to {bits}{why}.")
    if left:
        warnings.warn(f"torchao left {len(left)} of {len(names)} linears unquantized{why}: {', '.join(left[:3])}"
                      f"{' ...' if len(left) > 3 else ''}", stacklevel=2)
    if done:
        model._weights_quantized_in_place = True  # `PiForActionGeneration.save_pretrained` refuses to save them
    return done


def refuse_quantized_training(model: nn.Module) -> None:
    """Fine-tuning takes float weights: raises where `model` has quantized ones (torchao's tensors take no
    gradient, so a step would train the rest around them)."""
    if any(is_quantized(parameter) for parameter in model.parameters()):
        raise ValueError("This model's weights are quantized, and fine-tuning takes float weights: fine-tune the float "
                         "model, then quantize it.")


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether `weight` is a quantized tensor (torchao's subclasses) rather than a plain one, or a plain one sharded
    across processes (FSDP's `DTensor`)."""
    return type(weight) not in (torch.Tensor, nn.Parameter) and not isinstance(weight, DTensor)
