"""Our model with one optimisation undone, so the harness can show what each one buys.

Each ablation is named after the optimisation it removes, and undoes it through the model's own public
options for the duration of a call (nothing is patched: renaming an option breaks an ablation loudly,
and `tests/test_benchmarks.py` runs each one):

- `sdpa`: the attention backend is eager instead of sdpa (`set_attn_implementation`);
- `batched-cameras`: the vision tower runs once per image instead of once over all cameras
  (`PiComputeOptions.batched_cameras`);
- `prefix-trimming`: the prefix keeps the prompt's padding and the cameras no row has, and the last layer
  runs in full although only its keys and values (π0-FAST: and one token's output) are read; so does the
  flow variants' training pass, and π0-FAST's keeps the cameras no row has (`PiComputeOptions.trim_prefix`);
- `in-place-mlp`: without gradients, Gemma's MLPs allocate their activation and product afresh, as when
  training, instead of computing them in the gate projection's output (`PiComputeOptions.in_place_mlp`);
- `float32-products`: in bfloat16 on a CPU without bfloat16 units, linears keep PyTorch's bfloat16 kernel
  instead of computing float32 products (`optimize_for_cpu(float32_products=False)`; on a CPU with
  bfloat16 units it changes nothing);
- `transposed-products`: float32 products over a few dozen rows of a large weight (a flow step's action
  expert) take PyTorch's `x @ weightᵀ` instead of the transposed product
  (`optimize_for_cpu(transposed_products=False)`);
- `logit-skipping`: π0-FAST's training pass outputs the logits of every prompt slot, as `forward` does by
  default, instead of running the head only where a target is read and leaving out the trailing slots no
  row fills or labels (the training pass's `output_logits=True` instead of the `False` that `PiCollator`
  passes).

`sdpa`, `batched-cameras` and `prefix-trimming` also change a training step (π0-FAST's only where a camera is
absent from every row), and `logit-skipping` changes only π0-FAST's; the others apply only without gradients.
"""

import dataclasses
from contextlib import contextmanager


@contextmanager
def eager_attention(model):
    saved = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(saved)


def _without(option: str):
    @contextmanager
    def undo(model):
        saved = model.compute_options
        model.compute_options = dataclasses.replace(saved, **{option: False})
        try:
            yield
        finally:
            model.compute_options = saved

    return undo


def _cpu_kernel(option: str):
    """Undoes one of `optimize_for_cpu`'s kernel choices, which the harness makes on a CPU."""

    @contextmanager
    def undo(model):
        model.optimize_for_cpu(**{option: False})
        try:
            yield
        finally:
            model.optimize_for_cpu()

    return undo


@contextmanager
def every_logit(model):
    """Nothing to change in the model: the training pass is called with `output_logits=True`."""
    yield {"output_logits": True}


ABLATIONS = {"sdpa": eager_attention, "batched-cameras": _without("batched_cameras"),
             "prefix-trimming": _without("trim_prefix"), "in-place-mlp": _without("in_place_mlp"),
             "float32-products": _cpu_kernel("float32_products"),
             "transposed-products": _cpu_kernel("transposed_products"), "logit-skipping": every_logit}
TRAINING_ABLATIONS = ("sdpa", "batched-cameras", "prefix-trimming", "logit-skipping")  # those that change a training step
TRAINING_ONLY = {"logit-skipping": "pi0_fast"}  # those that change nothing else, and the variant whose training they change


def changes_inference(name: str) -> bool:
    return name not in TRAINING_ONLY


def changes_training(name: str, variant: str) -> bool:
    return name in TRAINING_ABLATIONS and TRAINING_ONLY.get(name, variant) == variant


def ablated(model, name: str, fn):
    """`fn` run with the optimisation `name` undone in `model`; `fn` also takes as keywords the arguments of
    the training pass that the ablation changes (none but for `logit-skipping`)."""

    def run(*args, **kwargs):
        with ABLATIONS[name](model) as arguments:
            return fn(*args, **kwargs, **(arguments or {}))

    return run
