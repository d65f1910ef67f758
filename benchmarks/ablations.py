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
  instead of computing float32 products (`optimize_for_cpu(False)`; on a CPU with bfloat16 units it
  changes nothing);
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


@contextmanager
def native_bfloat16(model):
    changed = model.optimize_for_cpu(False)
    try:
        yield
    finally:
        if changed:
            model.optimize_for_cpu()


@contextmanager
def every_logit(model):
    """Nothing to change in the model: the training pass is called with `output_logits=True`."""
    yield {"output_logits": True}


ABLATIONS = {"sdpa": eager_attention, "batched-cameras": _without("batched_cameras"),
             "prefix-trimming": _without("trim_prefix"), "in-place-mlp": _without("in_place_mlp"),
             "float32-products": native_bfloat16, "logit-skipping": every_logit}
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
