"""π0, π0.5 and π0-FAST: vision-language-action models on a PaliGemma backbone.

The prefix is every camera's SigLIP tokens (projected, not scaled) followed by the prompt tokens
(scaled by sqrt(width) inside Gemma's embedding). For the flow variants the suffix is [state token
(π0 only)] + one token per action step of the noisy chunk x_t: training runs prefix and suffix jointly
through the language model and the action expert (`joint_attention.py`) and regresses the velocity;
inference runs the prefix once into a static KV cache and each solver step runs only the expert over
the suffix. π0-FAST has no expert: it writes the action chunk as tokens (`fast_decoding.py`).
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GemmaModel, PreTrainedModel, SiglipVisionModel, StaticCache
from transformers import initialization as init
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.utils import ModelOutput

from configuration_pi import PiConfig

from .action_expert import PiActionExpert, PiAdaRMSModulation, apply_norm
from .compiled_generation import CompiledGeneration, EagerGeneration
from .cpu_linears import choose_cpu_kernels
from .fast_decoding import PiFastOutput, decode_fast, decode_step, fast_forward, token_losses
from .flow_matching import integrate, interpolate, sample_flow_time, time_embedding
from .input_checks import check_count, check_decoding, check_fast_inputs, check_flow_inputs, check_inputs
from .joint_attention import additive_mask, at_positions, block_causal_mask, joint_layer, last_valid_position
from .quantization import INT4_GROUP_SIZE, is_quantized, quantize_weights
from .real_time_chunking import SCHEDULES, FrozenPrefix, continuing


@dataclass(frozen=True)
class PiComputeOptions:
    """How the model computes, never what: each field is an optimisation, on by default, that leaves every
    output unchanged (up to the order of float sums). Set with `model.compute_options = PiComputeOptions(...)`;
    the benchmark harness turns each off to measure what it buys.

    batched_cameras: the vision tower runs once over every camera of the batch, not once per image.
    trim_prefix: cameras absent from every row and prompt slots padded in every row stay out of the prefix
        (no token attends to them and positions count valid tokens only), and the language model's last
        layer computes only the outputs someone reads (none when sampling a flow chunk or training one:
        there the prefix gives the suffix its keys and values, nothing more).
    in_place_mlp: without gradients, Gemma's MLP computes its activation and product in its gate
        projection's output, allocating two hidden-width tensors instead of four (`joint_attention.py`).
    """

    batched_cameras: bool = True
    trim_prefix: bool = True
    in_place_mlp: bool = True


@dataclass
class PiFlowMatchingOutput(ModelOutput):
    """
    loss (`torch.FloatTensor` of shape `()`): mean flow-matching loss over the batch; with knowledge insulation,
        `flow_loss + fast_loss`.
    losses (`torch.FloatTensor` of shape `(batch, action_horizon)`): per-step squared error, mean over action dims.
    velocity (`torch.FloatTensor` of shape `(batch, action_horizon, action_dim)`): predicted velocity at x_t.
    flow_loss, fast_loss (`torch.FloatTensor` of shape `()`): with knowledge insulation, the two parts of `loss`:
        the action expert's flow matching, and the backbone's next-token loss on the chunk's FAST tokens.
    """

    loss: torch.FloatTensor | None = None
    losses: torch.FloatTensor | None = None
    velocity: torch.FloatTensor | None = None
    flow_loss: torch.FloatTensor | None = None
    fast_loss: torch.FloatTensor | None = None


class PiPreTrainedModel(PreTrainedModel):
    config: PiConfig
    config_class = PiConfig
    base_model_prefix = "pi"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False  # the block-causal mask over two experts is not a flash-attention mask
    _supports_flex_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["GemmaDecoderLayer", "SiglipEncoderLayer"]
    # The reference's mixed precision: under bfloat16, the flow head (action and state projections, time MLPs)
    # and the adaRMS modulation stay float32; Gemma's norms compute in float32 on their own.
    _keep_in_fp32_modules_strict = [
        "action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in", "action_time_mlp_out",
        "time_mlp_in", "time_mlp_out", "modulation",
    ]

    def _apply(self, fn, recurse=True):
        """Casting the model to half precision (`.to(torch.bfloat16)`, `.bfloat16()`, `.half()`) keeps the modules
        of `_keep_in_fp32_modules_strict` float32, as loading it in that dtype does: both give the reference's
        mixed precision. A model with quantized weights keeps its dtype: torchao's tensors do not cast, so the rest
        would compute in another dtype than they do."""
        kept = set(self._keep_in_fp32_modules_strict or ())
        plain, quantized = self.weight_dtypes()
        if quantized is not None and plain is not None and fn(torch.zeros(0, dtype=plain)).dtype != plain:
            raise ValueError("This model's weights are quantized, and quantized weights keep their dtype: cast the model "
                             "first (model.to(torch.bfloat16)), then quantize it; or load the float folder in that dtype "
                             "with its quantization_config (from_pretrained(folder, dtype=..., quantization_config=...)).")
        float32 = {name: tensor.detach() for name, tensor in self.named_parameters()
                   if tensor.dtype == torch.float32 and not kept.isdisjoint(name.split("."))}
        super()._apply(fn, recurse)
        for name, tensor in self.named_parameters():
            if name in float32 and tensor.dtype in (torch.bfloat16, torch.float16):
                tensor.data = float32[name].to(tensor.device)  # the values as they were, not rounded and back
        return self

    def weight_dtypes(self) -> tuple[torch.dtype | None, torch.dtype | None]:
        """The dtype the plain weights compute in, and the one quantized weights stand for (None where there are
        none), both outside the float32 modules of `_keep_in_fp32_modules_strict`."""
        kept = set(self._keep_in_fp32_modules_strict or ())
        plain = quantized = None
        for name, tensor in self.named_parameters():
            if tensor.is_floating_point() and kept.isdisjoint(name.split(".")):
                if is_quantized(tensor):
                    quantized = quantized or tensor.dtype
                else:
                    plain = plain or tensor.dtype
        return plain, quantized

    def _init_weights(self, module):
        # Gemma norms scale by (1 + weight); the reference starts them, and the adaRMS modulation, at zero.
        if isinstance(module, PiAdaRMSModulation):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, GemmaRMSNorm):
            init.zeros_(module.weight)
        else:
            super()._init_weights(module)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Like `PreTrainedModel.from_pretrained`, but a checkpoint whose weights are missing, unexpected,
        mis-shaped or not finite is an error: nothing is ever initialised at random, and no NaN weight acts,
        behind the user's back. So is a folder saved quantized loaded in another dtype than it was quantized in: its
        quantized weights keep theirs, and the rest would compute in another."""
        return_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {key: sorted(map(str, info[key])) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        problems = {key: names for key, names in problems.items() if names}
        if problems:
            listed = "; ".join(f"{key}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}" for key, names in problems.items())
            raise ValueError(f"The checkpoint does not match {cls.__name__} built from its config ({listed}).")
        damaged = [name for name, tensor in model.state_dict().items() if not _finite(tensor)]
        if damaged:
            raise ValueError(f"The checkpoint holds NaN or infinite values in {len(damaged)} tensor(s): "
                             f"{', '.join(damaged[:8])}{' ...' if len(damaged) > 8 else ''}. It is damaged.")
        plain, quantized = model.weight_dtypes()
        if quantized is not None and plain is not None and plain != quantized:
            name = str(quantized).removeprefix("torch.")
            raise ValueError(f"This folder's weights were quantized in {name}, and quantized weights keep their dtype: "
                             f"load it in {name} (dtype={name} or none), or load the float folder in "
                             f"{str(plain).removeprefix('torch.')} with a quantization_config.")
        return (model, info) if return_info else model


class PiForActionGeneration(PiPreTrainedModel):
    """π0 / π0.5 / π0-FAST: `forward` is the training pass, `generate_actions` produces an action chunk."""

    VISION_MODULES = ("vision_tower", "multi_modal_projector")
    GEMMA_STACKS = ("language_model", "action_expert")

    def __init__(self, config: PiConfig):
        config.check()  # again: the config may have been changed since it was built
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        self.vision_tower = SiglipVisionModel(vision)
        self.multi_modal_projector = nn.Linear(vision.hidden_size, text.hidden_size)
        self.language_model = GemmaModel(text)
        self.action_expert = None
        if config.is_flow:
            self._init_flow_head(config)
        elif not config.tie_word_embeddings:
            self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.compute_options = PiComputeOptions()
        self.compiled_generation: CompiledGeneration | None = None  # see compile_generation
        self.post_init()
        # what transformers' quantizers (TorchAoConfig, ...) leave unquantized: the modules above by their full names,
        # which those match from the start (the adaRMS modulation sits in every expert layer)
        self._keep_in_fp32_modules |= {name for name, _ in self.named_modules()
                                       if name.split(".")[-1] in self._keep_in_fp32_modules_strict}

    def _init_flow_head(self, config: PiConfig):
        """The action expert and the projections between action chunks, flow time and expert width."""
        self.action_expert = PiActionExpert(config.expert_config, adaptive=config.use_adarms)
        width = config.expert_config.hidden_size
        self.action_in_proj = nn.Linear(config.action_dim, width)
        self.action_out_proj = nn.Linear(width, config.action_dim)
        if config.use_adarms:
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
        else:
            self.state_proj = nn.Linear(config.action_dim, width)
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)

    def flow_head_modules(self) -> list[str]:
        """The names of the flow head's projections (state, actions, flow time): every module outside the vision
        tower, the projector, the Gemma stacks and π0-FAST's output head. None for π0-FAST."""
        others = {*self.VISION_MODULES, *self.GEMMA_STACKS, "lm_head"}
        return [name for name, module in self.named_children() if module is not None and name not in others]

    def modules_without_gradient(self) -> list[nn.Module]:
        """The modules no training loss reaches. A flow model without knowledge insulation never reads the prefix's
        outputs: the language model's last layer gives the suffix keys and values only, so its query and output
        projections, second norm and MLP, and the final norm, get no gradient. None in π0-FAST and knowledge
        insulation, whose losses read the language model's outputs."""
        if not self.config.is_flow or self.config.knowledge_insulation:
            return []
        last = self.language_model.layers[-1]
        return [last.self_attn.q_proj, last.self_attn.o_proj, last.post_attention_layernorm, last.mlp,
                self.language_model.norm]

    def optimize_for_cpu(self, enable: bool = True, *, float32_products: bool = True,
                         transposed_products: bool = True) -> list[str]:
        """The one CPU-specific switch: without gradients, linears on the CPU choose their kernel per product
        (`cpu_linears.py`): large bfloat16 products in float32 on a CPU without bfloat16 arithmetic
        (`float32_products`; 2-5.5× faster chunks there), and float32 products over a few dozen rows of a large
        weight transposed (`transposed_products`; a flow step's action expert). Returns the names of the
        linears that take them; `enable=False`, or both options off, undoes it. Results are those of the
        plain linears up to the order of float sums (bfloat16: those of bfloat16 hardware)."""
        return choose_cpu_kernels(self, enable and float32_products, enable and transposed_products)

    def quantize_weights(self, bits: str = "int8", group_size: int = INT4_GROUP_SIZE) -> list[str]:
        """Weight-only quantization (torchao) of the vision tower, the language model and the action expert:
        "int8" (per output channel) or "int4" (per `group_size` inputs, where torchao has the kernel). In place;
        returns the linears quantized. See `quantization.py`."""
        return quantize_weights(self, bits, group_size)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers saves; weights `quantize_weights` quantized are refused before anything is written (a
        model loaded with `quantization_config` saves quantized, its config saying how)."""
        if getattr(self, "_weights_quantized_in_place", False):
            raise ValueError("This model's weights were quantized by quantize_weights, which saves no quantized "
                             "weights: save the float model and quantize it after loading, or load it with "
                             "from_pretrained(..., quantization_config=TorchAoConfig(...)), which saves quantized.")
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value):
        self.language_model.embed_tokens = value

    def get_output_embeddings(self):
        """π0-FAST's own output head, when untied (`config.tie_word_embeddings=False`); else None."""
        return getattr(self, "lm_head", None)

    def lm_head_weight(self) -> torch.Tensor:
        """[vocab, width]: the matrix π0-FAST's logits are read with, its own head or the tied embedding."""
        head = self.get_output_embeddings()
        return (self.get_input_embeddings() if head is None else head).weight

    # ---- prefix: images then prompt --------------------------------------------------------------

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> image tokens [N, num_image_tokens, text width] (SigLIP + projector)."""
        dtype = self.multi_modal_projector.weight.dtype
        features = self.vision_tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        return self.multi_modal_projector(features)

    def embed_prefix(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings [B, C·N + L, D] and validity [B, C·N + L]; absent cameras are masked, not dropped."""
        batch, cameras = pixel_attention_mask.shape
        images = pixel_values.flatten(0, 1)
        if self.compute_options.batched_cameras:
            image_tokens = self.get_image_features(images)
        else:
            image_tokens = torch.cat([self.get_image_features(image[None]) for image in images])
        tokens_per_image = image_tokens.shape[1]
        image_tokens = image_tokens.reshape(batch, cameras * tokens_per_image, -1)
        text_tokens = self.language_model.embed_tokens(input_ids)
        embeds = torch.cat([image_tokens.to(text_tokens.dtype), text_tokens], dim=1)
        valid = torch.cat([pixel_attention_mask.bool().repeat_interleave(tokens_per_image, dim=1), attention_mask.bool()], dim=1)
        return embeds, valid

    # ---- suffix: state and noisy actions ---------------------------------------------------------

    def suffix_ar_flags(self, device: torch.device) -> torch.Tensor:
        """ar flags of the suffix [S]: the state token (π0) and the first action token open new blocks."""
        leading = [True] if self.config.use_adarms else [True, True]
        return torch.tensor(leading + [False] * (self.config.action_horizon - 1), device=device)

    def embed_suffix(
        self, state: torch.Tensor | None, noisy_actions: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Suffix embeddings [B, S, W] in the expert's dtype, and the adaRMS conditioning (π0.5) or None (π0).

        `timestep` is one flow time per chunk [B] (the conditioning is then [B, W]) or one per action step [B, H]
        (real-time chunking's clean prefix; [B, H, W]). The flow head computes in its own weights' dtype: float32
        in a model loaded in bfloat16, as in the reference.
        """
        dtype = self.action_in_proj.weight.dtype
        action_tokens = self.action_in_proj(noisy_actions.to(dtype))
        time_emb = time_embedding(timestep, action_tokens.shape[-1], self.config.min_period, self.config.max_period).to(dtype)
        if self.config.use_adarms:
            adarms_cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_emb))))
            return action_tokens.to(self.action_expert.dtype), adarms_cond
        time_tokens = time_emb[:, None, :].expand_as(action_tokens) if time_emb.dim() == 2 else time_emb
        mixed = self.action_time_mlp_in(torch.cat([action_tokens, time_tokens], dim=-1))
        action_tokens = self.action_time_mlp_out(F.silu(mixed))
        state_token = self.state_proj(state.to(dtype))[:, None, :]
        return torch.cat([state_token, action_tokens], dim=1).to(self.action_expert.dtype), None

    def predict_velocity(self, suffix_out: torch.Tensor) -> torch.Tensor:
        """The expert's final-norm output over the suffix -> velocity [B, H, D] (in the flow head's dtype)."""
        action_out = suffix_out[:, -self.config.action_horizon :]
        return self.action_out_proj(action_out.to(self.action_out_proj.weight.dtype))

    # ---- the two experts -------------------------------------------------------------------------

    def attention_inputs(
        self, allowed: torch.Tensor, position_ids: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`allowed` [B, T, S] and positions [B, T] -> the additive mask and rotary (cos, sin) the layers take."""
        return additive_mask(allowed, like.dtype), self.language_model.rotary_emb(like, position_ids)

    def run_experts(
        self,
        prefix: torch.Tensor | None,
        suffix: torch.Tensor | None,
        attention_mask: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        adarms_cond: torch.Tensor | None = None,
        cache=None,
        read: torch.Tensor | None = None,
        insulate: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Runs whichever streams are given through all joint layers; returns their final-norm outputs.

        `prefix` is the language model's stream (the prefix, or π0-FAST's newly generated tokens),
        `suffix` the action expert's; mask and rotary embeddings come from `attention_inputs`. `read`
        [B, K] names the only positions of the language model's stream whose outputs are returned
        ([B, K, D]; with K = 0, None: the prefix alone then only fills `cache`, and beside the suffix only
        gives it keys and values); with `compute_options.trim_prefix` the last layer computes no others.
        `insulate`: the expert reads the language model's keys and values through a stop-gradient
        (knowledge insulation, `joint_layer`).
        """
        trim = read is not None and self.compute_options.trim_prefix
        layer_kwargs = {
            "position_embeddings": position_embeddings,
            "attention_mask": attention_mask,
            "attn_implementation": self.config._attn_implementation,
            "cache": cache,
            "in_place_mlp": self.compute_options.in_place_mlp,
            "insulate": insulate,
        }
        hidden = (prefix, suffix)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        # the layers transformers marked (`every_n_layers`); all of them where none is, as when the flag was set by hand
        marked = [layer.gradient_checkpointing for layer in self.language_model.layers]
        marked = marked if any(marked) else [True] * len(marked)
        expert_layers = self.action_expert.layers if self.action_expert is not None else [None] * len(self.language_model.layers)
        last = len(self.language_model.layers) - 1
        for idx, layers in enumerate(zip(self.language_model.layers, expert_layers)):
            run = partial(_joint_layer_positional, layers, layer_idx=idx, read=read if trim and idx == last else None, **layer_kwargs)
            # the flow-time conditioning is an input of the checkpoint, so that a reentrant backward reaches the time
            # MLP once
            if checkpointing and marked[idx]:
                hidden = self._gradient_checkpointing_func(run, *hidden, adarms_cond)
            else:
                hidden = run(*hidden, adarms_cond)
        prefix_out, suffix_out = hidden
        if read is not None and not trim:
            prefix_out = at_positions(prefix_out, read) if read.shape[1] else None
        if prefix_out is not None:
            prefix_out = self.language_model.norm(prefix_out)
        if suffix_out is not None:
            suffix_out, _ = apply_norm(self.action_expert.norm, suffix_out, adarms_cond)
        return prefix_out, suffix_out

    def encode_prefix(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: StaticCache | None = None,
        outputs: str = "all",
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Language-model pass over the prefix alone: its final-norm outputs and validity [B, P].

        With `cache`, every layer's keys and values are written into it (a static cache may be longer than
        the prefix: the slots that follow it are masked here). `outputs` says which outputs the caller
        reads, and the last layer computes only those: "all" [B, P, D]; "last", each row's last valid
        token [B, D] (whose logits give π0-FAST's first token); "none", only the cache is filled (None).
        """
        if outputs not in ("all", "last", "none"):
            raise ValueError(f'outputs must be "all", "last" or "none", not {outputs!r}')
        prefix, valid = self.embed_prefix(pixel_values, pixel_attention_mask, input_ids, attention_mask)
        allowed = block_causal_mask(valid, torch.zeros_like(valid))
        if cache is not None:
            allowed = F.pad(allowed, (0, cache.get_max_length() - allowed.shape[-1]), value=False)
        attention = self.attention_inputs(allowed, valid.long().cumsum(1) - 1, prefix)
        read = None
        if outputs != "all":
            read = last_valid_position(valid)[:, None] if outputs == "last" else valid.new_zeros((len(valid), 0), dtype=torch.long)
        prefix_out, _ = self.run_experts(prefix, None, *attention, cache=cache, read=read)
        return (prefix_out[:, 0] if outputs == "last" else prefix_out), valid

    # ---- training ----------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        actions: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        action_is_pad: torch.Tensor | None = None,
        prefix_actions: torch.Tensor | None = None,
        output_logits: bool = True,
        return_dict: bool | None = None,
    ) -> PiFlowMatchingOutput | PiFastOutput | tuple:
        r"""
        The training pass.

        π0 / π0.5 (flow matching; prefix and suffix attend jointly, one pass):
            actions (`[B, H, D]`): normalised target chunk, zero-padded to `action_dim`. Required.
            state (`[B, D]`): normalised state (π0 only). noise (`[B, H, D]`) and timestep (`[B]`, or `[B, H]`
            per action step) are drawn when absent (t ~ Beta(1.5, 1)·0.999 + 0.001; with `config.rtc_max_delay`,
            per step, the first 0 to rtc_max_delay steps of each chunk at flow time 0: a clean prefix).
            action_is_pad (`[B, H]` bool, LeRobot's name): steps past the episode end, left out of `loss` (the
            reference averages over them too); so are steps at flow time 0. prefix_actions (`[B, H, D]`,
            normalised as `actions`): what the clean prefix holds instead of `actions`, e.g. the actions the robot
            actually executed where they differ from the recorded ones; needs per-step flow times. Returns loss,
            losses [B, H] (every step), velocity.
        π0-FAST (prefix-LM):
            token_type_ids (`[B, L]`): 0 = prefix (bidirectional), 1 = postfix (causal); all prefix when absent.
            labels (`[B, L]`): target ids aligned with `input_ids`, -100 where no loss. Returns loss,
            losses [B] (mean target NLL per example) and logits [B, L, V]. output_logits=False (training, with
            labels; `PiCollator` sets it) returns no logits: the vocabulary-wide head then runs only where a target
            is read, and trailing prompt slots that every row pads and none labels stay out of the pass.
        """
        check_inputs(self.config, pixel_values, pixel_attention_mask, input_ids, attention_mask)
        if self.config.is_flow:
            if self.config.knowledge_insulation:
                if labels is None or token_type_ids is None:
                    raise ValueError("Knowledge insulation trains the backbone on the chunk's FAST tokens: pass `labels` and "
                                     "`token_type_ids` (a π0.5 processor with a FAST action tokenizer writes them).")
                check_fast_inputs(self.config, input_ids, token_type_ids, labels)
            elif token_type_ids is not None or labels is not None:
                raise ValueError(f"{self.config.variant} learns from `actions`; token_type_ids and labels are π0-FAST's, or "
                                 "π0.5's with knowledge insulation (config.knowledge_insulation).")
            if not output_logits:
                raise ValueError("output_logits is π0-FAST's.")
            output = self._flow_forward(pixel_values, pixel_attention_mask, input_ids, attention_mask, actions, state,
                                        noise, timestep, action_is_pad, token_type_ids, labels, prefix_actions)
        else:
            flow_inputs = {"actions": actions, "state": state, "noise": noise, "timestep": timestep,
                           "action_is_pad": action_is_pad, "prefix_actions": prefix_actions}
            if given := [name for name, value in flow_inputs.items() if value is not None]:
                raise ValueError(f"π0-FAST reads actions as tokens: pass `labels` (and `token_type_ids`), not {', '.join(given)}.")
            check_fast_inputs(self.config, input_ids, token_type_ids, labels)
            if labels is None and not output_logits:
                raise ValueError("output_logits=False leaves a pass without `labels` nothing to return.")
            # Cameras no row has stay out of the prefix; prompt slots stay unless no logits are output.
            cameras = self.cameras_in_use(pixel_values, pixel_attention_mask)
            output = fast_forward(self, *cameras, input_ids, attention_mask, token_type_ids, labels, output_logits)
        return output if return_dict is not False else output.to_tuple()

    def _flow_forward(
        self, pixel_values, pixel_attention_mask, input_ids, attention_mask, actions, state, noise, timestep, action_is_pad,
        token_type_ids=None, labels=None, prefix_actions=None,
    ):
        if actions is None:
            raise ValueError("forward is the flow-matching training pass and needs `actions`; sample with generate_actions.")
        check_flow_inputs(self.config, pixel_values.shape[0], state, actions, noise, timestep, action_is_pad,
                          prefix_actions=prefix_actions)
        config = self.config
        if noise is None:
            noise = torch.randn_like(actions)
        if timestep is None:
            timestep = sample_flow_time(
                actions.shape[0], config.time_beta_alpha, config.time_beta_beta, config.time_scale, config.time_offset, actions.device
            )
            if config.rtc_max_delay:
                config.validate_rtc()  # it may have been set since the model was built
                timestep = with_clean_prefix(timestep, config.rtc_max_delay, config.action_horizon)
        if prefix_actions is not None:
            if timestep.dim() != 2:
                raise ValueError("prefix_actions fills a clean prefix, the steps at flow time 0: pass a per-step timestep "
                                 "[batch, action_horizon], or leave `timestep` out on a model with config.rtc_max_delay "
                                 "(it then draws one).")
            actions = torch.where((timestep == 0)[..., None], prefix_actions.to(actions.dtype), actions)
        x_t, target_velocity = interpolate(actions, noise, timestep)

        if labels is not None:
            return self._insulated_forward(pixel_values, pixel_attention_mask, input_ids, attention_mask, token_type_ids,
                                           labels, state, x_t, timestep, target_velocity, action_is_pad)
        # The loss reads only the suffix: the prefix leaves out what no row uses, and in the language model's
        # last layer prefix tokens give the suffix their keys and values, nothing more (as when sampling).
        prefix_inputs = self.prefix_in_use(pixel_values, pixel_attention_mask, input_ids, attention_mask)
        prefix, prefix_valid = self.embed_prefix(*prefix_inputs)
        suffix, adarms_cond = self.embed_suffix(state, x_t, timestep)
        valid = torch.cat([prefix_valid, prefix_valid.new_ones(suffix.shape[:2])], dim=1)
        suffix_ar = self.suffix_ar_flags(valid.device)
        ar = torch.cat([suffix_ar.new_zeros(prefix.shape[1]), suffix_ar])[None].expand_as(valid)
        attention = self.attention_inputs(block_causal_mask(valid, ar), valid.long().cumsum(1) - 1, prefix)
        no_prefix_output = valid.new_zeros((len(valid), 0), dtype=torch.long)
        _, suffix_out = self.run_experts(prefix, suffix, *attention, adarms_cond, read=no_prefix_output)
        velocity = self.predict_velocity(suffix_out)
        losses, loss = flow_losses(velocity, target_velocity, timestep, action_is_pad)
        return PiFlowMatchingOutput(loss=loss, losses=losses, velocity=velocity)

    def _insulated_forward(self, pixel_values, pixel_attention_mask, input_ids, attention_mask, token_type_ids, labels,
                           state, x_t, timestep, target_velocity, action_is_pad) -> PiFlowMatchingOutput:
        """Knowledge insulation ("Knowledge Insulating Vision-Language-Action Models", arXiv 2505.23705): the prompt
        is followed by the chunk's FAST tokens (`token_type_ids` 1, causal), which the backbone learns to predict
        (`labels`, the tied head); the action expert attends to the images and the prompt only, not to the FAST
        tokens, through keys and values that pass no gradient back to the backbone, at the positions it has when
        sampling (which has no FAST tokens). `loss = flow_loss + fast_loss`."""
        cameras = self.cameras_in_use(pixel_values, pixel_attention_mask)
        prefix, prefix_valid = self.embed_prefix(*cameras, input_ids, attention_mask)
        images = prefix.shape[1] - input_ids.shape[1]
        fast = torch.cat([token_type_ids.new_zeros(len(prefix), images), token_type_ids], dim=1).bool() & prefix_valid
        suffix, adarms_cond = self.embed_suffix(state, x_t, timestep)
        valid = torch.cat([prefix_valid, prefix_valid.new_ones(suffix.shape[:2])], dim=1)
        ar = torch.cat([fast, self.suffix_ar_flags(valid.device)[None].expand(len(fast), -1)], dim=1)
        allowed = block_causal_mask(valid, ar)
        allowed[:, prefix.shape[1]:, : prefix.shape[1]] &= ~fast[:, None, :]  # the expert never sees a FAST token
        prefix_positions = prefix_valid.long().cumsum(1) - 1
        suffix_positions = (prefix_valid & ~fast).sum(dim=1, keepdim=True) + torch.arange(suffix.shape[1], device=valid.device)
        attention = self.attention_inputs(allowed, torch.cat([prefix_positions, suffix_positions], dim=1), prefix)
        prefix_out, suffix_out = self.run_experts(prefix, suffix, *attention, adarms_cond, insulate=True)
        velocity = self.predict_velocity(suffix_out)
        losses, flow_loss = flow_losses(velocity, target_velocity, timestep, action_is_pad)
        fast_loss = token_losses(prefix_out[:, images:], labels, self.lm_head_weight()).mean()
        return PiFlowMatchingOutput(loss=flow_loss + fast_loss, losses=losses, velocity=velocity, flow_loss=flow_loss,
                                    fast_loss=fast_loss)

    # ---- inference ---------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_actions(self, pixel_values, pixel_attention_mask, input_ids, attention_mask, **options) -> torch.Tensor:
        """π0 / π0.5: a normalised action chunk [B, H, D] (see `sample_actions` for the options).
        π0-FAST: the generated token ids [B, T] (see `decode_action_tokens` for the options)."""
        generate = self.sample_actions if self.config.is_flow else self.decode_action_tokens
        return generate(pixel_values, pixel_attention_mask, input_ids, attention_mask, **options)

    @torch.no_grad()
    def sample_actions(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        state: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        solver: str = "euler",
        generator: torch.Generator | None = None,
        prev_actions: torch.Tensor | None = None,
        inference_delay: int | torch.Tensor | None = None,
        execution_horizon: int | torch.Tensor | None = None,
        max_guidance_weight: float = 5.0,
        prefix_schedule: str = "exp",
    ) -> torch.Tensor:
        """Samples a normalised action chunk [B, H, D] by integrating the flow from `noise` (t=1) to t=0.

        The prefix (without cameras and prompt slots that no row uses) runs once into a static KV cache sized
        prefix + suffix; each velocity evaluation runs only the action expert over the suffix and writes its
        keys into the suffix slots, which the next evaluation overwrites: the cache is never grown nor copied.
        `noise` or `generator` make it reproducible; `solver` is "euler" (the reference), "heun" or "rk4";
        `num_steps` counts solver steps. See `compile_generation` for the compiled variant.

        Real-time chunking (`real_time_chunking.py`): `prev_actions` [B, H, D] (normalised) is what the robot is
        still executing from the previous chunk, aligned to this chunk's first step; `inference_delay` d steps of
        it run while this chunk is computed, and `execution_horizon` s steps of each chunk run before the next
        is requested (ints, or one per row). The chunk is then guided towards it (β = `max_guidance_weight`,
        `prefix_schedule` "exp", "linear", "ones" or "zeros"), or, for a model trained with a clean prefix
        (`config.rtc_max_delay`), starts with its first d actions unchanged. Without `prev_actions`, or with
        β = 0, sampling is exactly as without.
        """
        if not self.config.is_flow:
            raise ValueError("π0-FAST decodes action tokens: use generate_actions or decode_action_tokens.")
        check_inputs(self.config, pixel_values, pixel_attention_mask, input_ids, attention_mask)
        check_flow_inputs(self.config, pixel_values.shape[0], state, noise=noise, prev_actions=prev_actions)
        if prev_actions is None and (inference_delay is not None or execution_horizon is not None):
            raise ValueError("inference_delay and execution_horizon say how a chunk continues prev_actions: pass "
                             "prev_actions with them, or neither.")
        if prefix_schedule not in SCHEDULES:
            raise ValueError(f"Unknown prefix_schedule {prefix_schedule!r}; expected one of {', '.join(SCHEDULES)}.")
        config = self.config
        batch = pixel_values.shape[0]
        if noise is None:
            shape = (batch, config.action_horizon, config.action_dim)
            noise = torch.randn(shape, generator=generator, device=pixel_values.device, dtype=torch.float32)
        num_steps = config.num_inference_steps if num_steps is None else num_steps
        check_count("num_steps", num_steps)

        run = self.generation_runtime()
        prefix_inputs = self.prefix_in_use(pixel_values, pixel_attention_mask, input_ids, attention_mask, run.prompt_bucket)
        suffix_ar = self.suffix_ar_flags(pixel_values.device)
        suffix_len = suffix_ar.shape[0]
        prefix_len = config.num_image_tokens * prefix_inputs[0].shape[1] + prefix_inputs[2].shape[1]
        cache = run.cache(batch, prefix_len + suffix_len)
        _, prefix_valid = run.prefix(*prefix_inputs, cache=cache, outputs="none")

        # The suffix's mask rows and rotary embeddings are the same at every step: built once.
        valid = torch.cat([prefix_valid, prefix_valid.new_ones(batch, suffix_len)], dim=1)
        ar = torch.cat([suffix_ar.new_zeros(prefix_len), suffix_ar])[None].expand_as(valid)
        like = self.action_expert.layers[0].self_attn.q_proj.weight  # the dtype the expert computes in
        attention = self.attention_inputs(
            block_causal_mask(valid, ar)[:, prefix_len:], (valid.long().cumsum(1) - 1)[:, prefix_len:], like
        )

        def velocity_at(x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:  # flow times [B], or per step [B, H]
            return run.output(run.step(x_t, timestep, state, attention, cache))

        def velocity(x_t: torch.Tensor, t: float) -> torch.Tensor:
            return velocity_at(x_t, torch.full((batch,), t, dtype=torch.float32, device=x_t.device))

        noise = noise.float()
        if prev_actions is not None:
            def differentiable(x_t: torch.Tensor, t: float) -> torch.Tensor:  # eager; reads the prefix, writes nothing
                timestep = torch.full((batch,), t, dtype=torch.float32, device=x_t.device)
                return self.velocity(x_t, timestep, state, attention, FrozenPrefix(cache, prefix_len))

            velocity, noise = continuing(self.config, velocity_at, differentiable, noise, prev_actions,
                                         inference_delay, execution_horizon, max_guidance_weight, prefix_schedule)
        return integrate(velocity, noise, num_steps, solver)

    def velocity(self, x_t, timestep, state, attention, cache) -> torch.Tensor:
        """One velocity evaluation [B, H, D] (float32): the action expert over the suffix at flow time `timestep`
        [B], against the prefix in `cache`, with the suffix's `attention` inputs (`attention_inputs`). The suffix's
        keys and values go into the cache slots after the prefix, which the next evaluation overwrites."""
        suffix, adarms_cond = self.embed_suffix(state, x_t, timestep)
        _, suffix_out = self.run_experts(None, suffix, *attention, adarms_cond, cache=cache)
        cache.crop(-suffix.shape[1])  # rewind to the prefix; the next step overwrites the suffix slots
        return self.predict_velocity(suffix_out).float()

    def compile_generation(self, prefix: bool = True, **options) -> None:
        """Compiles what `generate_actions` runs with `torch.compile(**options)`: the step it repeats — one
        velocity evaluation (π0, π0.5) or one new token (π0-FAST) — and, with `prefix`, the pass that runs
        the cameras and the prompt into the cache once per call. `mode="reduce-overhead"` also replays both
        as CUDA graphs, which spares a GPU the launch of each of their hundreds of small kernels. From then on
        prompts are trimmed only to a multiple of `PROMPT_BUCKET` slots and each batch size and length reuses
        one cache (`compiled_generation.py`); the first call of each shape compiles.
        """
        step = self.velocity if self.config.is_flow else partial(decode_step, self)
        self.compiled_generation = CompiledGeneration(self, self.encode_prefix, step, compile_prefix=prefix, **options)

    def generation_runtime(self) -> EagerGeneration:
        """The prefix pass, step and cache the samplers run with: compiled after `compile_generation`, else eager."""
        if self.compiled_generation is not None:
            return self.compiled_generation
        step = self.velocity if self.config.is_flow else partial(decode_step, self)
        return EagerGeneration(self, self.encode_prefix, step)

    def cameras_in_use(self, pixel_values, pixel_attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The cameras the model reads: with `compute_options.trim_prefix`, not those absent from every row."""
        if not self.compute_options.trim_prefix:
            return pixel_values, pixel_attention_mask
        return drop_absent_cameras(pixel_values, pixel_attention_mask)

    def prefix_in_use(self, pixel_values, pixel_attention_mask, input_ids, attention_mask, bucket: int | None = None):
        """The prefix inputs the model reads: with `compute_options.trim_prefix`, those of `drop_unused_prefix`."""
        if not self.compute_options.trim_prefix:
            return pixel_values, pixel_attention_mask, input_ids, attention_mask
        return drop_unused_prefix(pixel_values, pixel_attention_mask, input_ids, attention_mask, bucket)

    @torch.no_grad()
    def decode_action_tokens(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        allowed_token_ids: torch.Tensor | None = None,
        reference_positions: bool | None = None,
    ) -> torch.Tensor:
        """π0-FAST: decodes action tokens after the (right-padded, prefix-only) prompt; returns ids [B, T].

        Greedy when `temperature` is 0, else sampled (reproducibly with `generator`). Stops after
        `max_new_tokens` (default `config.max_new_tokens`) or once every row has emitted EOS; a row's
        tokens after its EOS are padding. `allowed_token_ids` restricts every choice to those ids (e.g. the
        FAST action range plus "|" and EOS). `reference_positions` gives the first generated token the position
        prefill_len + 1, as openpi does; False makes positions contiguous, as LeRobot does (default:
        `config.skip_position_after_prefix`). As when sampling a chunk, cameras absent from every row and
        prompt slots padded in every row stay out of the prefix (`drop_unused_prefix`).
        """
        if self.config.is_flow:
            raise ValueError(f"{self.config.variant} samples actions by flow matching: use generate_actions or sample_actions.")
        check_inputs(self.config, pixel_values, pixel_attention_mask, input_ids, attention_mask)
        max_new_tokens = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        allowed_token_ids = check_decoding(self.config, max_new_tokens, temperature, allowed_token_ids)
        if reference_positions is None:
            reference_positions = self.config.skip_position_after_prefix
        run = self.generation_runtime()
        prefix_inputs = self.prefix_in_use(pixel_values, pixel_attention_mask, input_ids, attention_mask, run.prompt_bucket)
        return decode_fast(self, run, *prefix_inputs, max_new_tokens, temperature, generator, allowed_token_ids,
                           reference_positions)


def flow_losses(velocity, target_velocity, timestep, action_is_pad) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step squared errors [B, H] (mean over action dims) and their mean over the steps that carry a loss:
    not those past the episode end (`action_is_pad`), nor those given clean (flow time 0: inputs, not predictions)."""
    losses = (velocity.float() - target_velocity.float()).pow(2).mean(dim=-1)
    scored = None if action_is_pad is None else ~action_is_pad.bool()
    if timestep.dim() == 2:
        scored = (timestep > 0) if scored is None else scored & (timestep > 0)
    loss = losses.mean() if scored is None else (losses * scored).sum() / scored.sum().clamp(min=1)
    return losses, loss


def with_clean_prefix(timestep: torch.Tensor, max_delay: int, horizon: int) -> torch.Tensor:
    """Per-step flow times [B, H] from one per chunk [B]: a delay d drawn uniformly from 0..`max_delay` per example,
    and its first d steps given clean (flow time 0), as the previous chunk fixes them when the robot runs."""
    delay = torch.randint(0, max_delay + 1, (len(timestep), 1), device=timestep.device)
    steps = torch.arange(horizon, device=timestep.device)
    return torch.where(steps < delay, torch.zeros_like(timestep)[:, None], timestep[:, None])


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in `tensor`; screened by its sum (one pass, no copy), confirmed element-wise only where the
    sum is not finite."""
    if not tensor.is_floating_point() or tensor.device.type == "meta":
        return True
    if is_quantized(tensor):  # torchao's tensor subclasses: the values they stand for
        tensor = tensor.dequantize()
    return bool(torch.isfinite(tensor.sum(dtype=torch.float32))) or bool(torch.isfinite(tensor).all())


def drop_unused_prefix(
    pixel_values, pixel_attention_mask, input_ids, attention_mask, bucket: int | None = None
) -> tuple[torch.Tensor, ...]:
    """The prefix inputs without the cameras absent from every row and the prompt slots padded in every row.

    No token attends to those, and positions count valid tokens only, so sampling is unchanged; a
    right-padded batch of short prompts, or a robot with fewer cameras than the checkpoint, costs less.
    With `bucket`, only trailing prompt slots go, and the prompt keeps a multiple of `bucket` slots (or
    all of them), so that prompts of many lengths share a few shapes.
    """
    pixel_values, pixel_attention_mask = drop_absent_cameras(pixel_values, pixel_attention_mask)
    slots = attention_mask.bool().any(dim=0)
    if bucket is not None:
        used = int(slots.nonzero().max()) + 1 if slots.any() else 0
        keep = min(-(-max(used, 1) // bucket) * bucket, slots.shape[0])
        slots = torch.arange(slots.shape[0], device=slots.device) < keep
    if not slots.all():
        input_ids, attention_mask = input_ids[:, slots], attention_mask[:, slots]
    return pixel_values, pixel_attention_mask, input_ids, attention_mask


def drop_absent_cameras(pixel_values, pixel_attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The cameras without those absent from every row (all of them where no row has any)."""
    cameras = pixel_attention_mask.bool().any(dim=0)
    if cameras.any() and not cameras.all():
        return pixel_values[:, cameras], pixel_attention_mask[:, cameras]
    return pixel_values, pixel_attention_mask


def _joint_layer_positional(layers, prefix, suffix, adarms_cond, **kwargs):
    """`joint_layer` with the two streams and the expert's conditioning as positional tensors, as activation
    checkpointing wants them."""
    return tuple(joint_layer(layers, [prefix, suffix], conds=(None, adarms_cond), **kwargs))


__all__ = ["PiPreTrainedModel", "PiForActionGeneration", "PiFlowMatchingOutput", "PiFastOutput"]
