"""FSDP2 units for the Gemma decoder layers, which accelerate's wrapping by class cannot make, and for an
embedding that is also read as the output head.

The language model and the action expert run as one joint layer (`modeling_pi.joint_attention`) that calls each
decoder layer's norms, projections and MLP in turn, never the decoder layer's own forward. FSDP2 gathers a unit's
weights in the forward pre-hook of the module it wraps, so a `GemmaDecoderLayer` wrapped as a whole would never be
gathered. `fully_shard` also takes a list of modules sharded as one group, gathered when the first of them runs:
each decoder layer becomes one such group of the modules the joint layer calls. This runs in `pi train` after
the Trainer has made the accelerator and before accelerate prepares the model; accelerate then wraps what its
config names (the SigLIP layers) and the root, and leaves these groups as they are.

π0-FAST (and knowledge insulation) read the logits with the embedding matrix (`lm_head_weight`), after the whole
stack has run. Accelerate makes the input embedding a unit that reshards after its forward unless the model names
the same matrix as its output embeddings, which a tied π model does not (it has no head module): the matrix would be
a shard by the time the head reads it. Such a model's embedding becomes a unit here that stays gathered from its
forward to the backward, as accelerate keeps a tied head.
"""

import torch
from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaDecoderLayer


def decoder_layer_parts(layer: GemmaDecoderLayer) -> list[nn.Module]:
    """The modules the joint layer calls, which together hold every weight of the layer."""
    attention = layer.self_attn
    return [layer.input_layernorm, attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
            layer.post_attention_layernorm, layer.mlp]


def shard_units(model: nn.Module, accelerator) -> None:
    """Shards every decoder layer of `model` as one FSDP2 group, and an embedding read as the head as a unit that
    stays gathered through the backward, with the options accelerate (1.16, `fsdp2_prepare_model`) gives its own
    units: the config's resharding, offloading and mixed precision, its device mesh, and float32 master weights
    under mixed precision."""
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
    if reads_embedding_as_head(model):
        fully_shard(model.get_input_embeddings(), **{**options, "reshard_after_forward": False})


def reads_embedding_as_head(model: nn.Module) -> bool:
    """Whether training reads logits with the input embedding's matrix (π0-FAST, knowledge insulation, tied head)."""
    config = model.config
    return ((config.variant == "pi0_fast" or config.knowledge_insulation)
            and model.lm_head_weight() is model.get_input_embeddings().weight)
