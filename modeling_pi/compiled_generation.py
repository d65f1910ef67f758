"""What the samplers run: the prefix pass, the step they repeat, and the KV cache both write into.

Both samplers (a flow chunk, π0-FAST's tokens) run the cameras and the prompt once into a static cache,
then repeat one step against it: a velocity evaluation, or one new token. `EagerGeneration` runs the
model's own methods with a fresh cache per call. `CompiledGeneration` (`compile_generation`) runs them
through `torch.compile` and keeps what compiled code wants: few shapes (the prompt is trimmed only to a
multiple of `PROMPT_BUCKET` slots) and the same cache tensors every call (one static cache per batch size
and length, allocated up front, reset in place), so that the first call of each shape compiles and a
deployment sees at most a handful. Kept apart from the model's math, which is the same either way.
"""

import torch
from transformers import StaticCache

PROMPT_BUCKET = 16  # with compiled generation, prompts are trimmed to a multiple of this many slots


class EagerGeneration:
    """The model's own prefix pass and step, a fresh static cache per call."""

    prompt_bucket: int | None = None

    def __init__(self, model, prefix, step):
        self.model, self.prefix, self.step = model, prefix, step

    def cache(self, batch: int, length: int) -> StaticCache:
        """A static cache for `batch` rows of `length` positions."""
        return StaticCache(config=self.model.config.text_config, max_cache_len=length)

    def output(self, tensor: torch.Tensor) -> torch.Tensor:
        """A step's output as the caller may keep it."""
        return tensor


class CompiledGeneration(EagerGeneration):
    """The prefix pass (with `compile_prefix`) and the step compiled with `torch.compile(**options)`."""

    prompt_bucket = PROMPT_BUCKET

    def __init__(self, model, prefix, step, compile_prefix: bool = True, **options):
        super().__init__(model, torch.compile(prefix, **options) if compile_prefix else prefix, torch.compile(step, **options))
        self.compiles_prefix = compile_prefix
        self.caches: dict[tuple, StaticCache] = {}

    def cache(self, batch: int, length: int) -> StaticCache:
        """The cache kept for this shape, reset in place. Allocated here, not lazily inside compiled code, so
        that its tensors are marked as static addresses; and outside `torch.inference_mode`, even when called
        under it, so that a later call outside it (guided sampling's) may still write into them."""
        kv = self.model.language_model.layers[0].self_attn.k_proj.weight
        key = (batch, length, kv.dtype, kv.device)
        if key not in self.caches:
            text = self.model.config.text_config
            with torch.inference_mode(False):
                cache = StaticCache(config=text, max_cache_len=length)
                cache.early_initialization(batch, text.num_key_value_heads, text.head_dim, kv.dtype, kv.device)
            self.caches[key] = cache
        cache = self.caches[key]
        cache.reset()
        return cache

    def output(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy: a CUDA-graph replay overwrites its previous output."""
        return tensor.clone()
