"""FSDP2 units for the Gemma decoder layers, which accelerate's wrapping by class cannot make.

The language model and the action expert run as one joint layer (`modeling_pi.joint_attention`) that calls each
decoder layer's norms, projections and MLP in turn, never the decoder layer's own forward. FSDP2 gathers a unit's
weights in the forward pre-hook of the module it wraps, so a `GemmaDecoderLayer` wrapped as a whole would never be
gathered. `fully_shard` also takes a list of modules sharded as one group, gathered when the first of them runs:
each decoder layer becomes one such group of the modules the joint layer calls. This runs in `pi train` after
the Trainer has made the accelerator and before accelerate prepares the model; accelerate then wraps what its
config names (the SigLIP layers) and the root, and leaves these groups as they are.
"""

import torch
from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaDecoderLayer


def decoder_layer_parts(layer: GemmaDecoderLayer) -> list[nn.Module]:
    """The modules the joint layer calls, which together hold every weight of the layer."""
    attention = layer.self_attn
    return [layer.input_layernorm, attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
            layer.post_attention_layernorm, layer.mlp]


def shard_decoder_layers(model: nn.Module, accelerator) -> None:
    """Shards every decoder layer of `model` as one FSDP2 group, with the options accelerate (1.16,
    `fsdp2_prepare_model`) gives its own units: the config's resharding, offloading and mixed precision, its device
    mesh, and float32 master weights under mixed precision."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    mesh = getattr(accelerator, "torch_device_mesh", None)
    options = {"reshard_after_forward": plugin.reshard_after_forward, "offload_policy": plugin.cpu_offload,
               "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
               "mesh": mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None}
    layers = [module for module in model.modules() if isinstance(module, GemmaDecoderLayer)]
    if accelerator.mixed_precision != "no":
        for param in (param for layer in layers for param in layer.parameters()):
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.to(torch.float32)
    for layer in layers:
        fully_shard(decoder_layer_parts(layer), **options)
