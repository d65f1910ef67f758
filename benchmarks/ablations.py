"""Our model with one optimisation undone, so the harness can show what each one buys.

Each ablation is named after the optimisation it removes, and patches one model instance for the
duration of a call:

- `sdpa`: the attention backend is eager instead of sdpa;
- `batched-cameras`: the vision tower runs once per image instead of once over all cameras;
- `prefix-trimming`: the prefix pass keeps the prompt's padding and the cameras no row has, and runs
  the last layer in full although only its keys and values (π0-FAST: and one token's output) are read;
  so does the flow variants' training pass, whose loss reads only the suffix, and π0-FAST's keeps the
  cameras no row has;
- `float32-products`: in bfloat16 on a CPU without bfloat16 units, linears keep PyTorch's bfloat16
  kernel instead of computing float32 products;
- `onednn-products`: in float32 on the CPU, linears keep MKL's product instead of oneDNN's;
- `in-place-mlp`: without gradients, Gemma's MLPs allocate their activation and product afresh, as when
  training, instead of computing them in the gate projection's output;
- `cache-in-place`: every velocity evaluation (π0, π0.5) runs against a copy of the KV cache, prefix
  included, instead of writing its keys and values into the suffix slots of the one cache and rewinding
  (π0-FAST's decoding is left as it is);
- `logit-skipping`: π0-FAST's training pass outputs the logits of every prompt slot, as `forward` does by
  default, instead of running the head only where a target is read and leaving out the trailing slots no
  row fills or labels (`output_logits=False`, which `PiCollator` passes).

`sdpa`, `batched-cameras` and `prefix-trimming` also change a training step (π0-FAST's only where a camera is
absent from every row), and `logit-skipping` changes only π0-FAST's; the others apply only without gradients.
"""

import copy
from contextlib import contextmanager

import torch

import modeling_pi.cpu_linears as cpu_linears
import modeling_pi.joint_attention as joint_attention
import modeling_pi.modeling_pi as modeling


@contextmanager
def eager_attention(model):
    saved = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        yield
    finally:
        model.config._attn_implementation = saved


@contextmanager
def per_camera_vision(model):
    batched = model.get_image_features
    model.get_image_features = lambda images: torch.cat([batched(image[None]) for image in images])
    try:
        yield
    finally:
        model.get_image_features = batched


@contextmanager
def whole_prefix(model):
    run_experts, drop, drop_cameras = model._run_experts, modeling.drop_unused_prefix, modeling.drop_absent_cameras

    def whole_last_layer(*args, read=None, **kwargs):
        prefix_out, suffix_out = run_experts(*args, **kwargs)
        return (prefix_out if read is None else joint_attention.at_positions(prefix_out, read)), suffix_out

    model._run_experts = whole_last_layer
    modeling.drop_unused_prefix = lambda *inputs, bucket=None: inputs
    modeling.drop_absent_cameras = lambda *cameras: cameras
    try:
        yield
    finally:
        model._run_experts, modeling.drop_unused_prefix, modeling.drop_absent_cameras = run_experts, drop, drop_cameras


@contextmanager
def _module_setting(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def native_bfloat16(model):
    return _module_setting(cpu_linears, "lacks_bfloat16_arithmetic", lambda: False)


def mkl_float32(model):
    return _module_setting(cpu_linears, "ONEDNN_MIN_WEIGHT", float("inf"))


def allocating_mlp(model):
    return _module_setting(joint_attention, "gemma_mlp", lambda mlp, x: mlp(x))


def copied_cache(model):
    in_place = model._velocity

    def velocity(x_t, timestep, state, attention, cache):
        return in_place(x_t, timestep, state, attention, copy.deepcopy(cache))

    return _module_setting(model, "_velocity", velocity)


@contextmanager
def every_logit(model):
    forward = model.forward
    model.forward = lambda *args, **kwargs: forward(*args, **{**kwargs, "output_logits": True})
    try:
        yield
    finally:
        del model.forward  # the class's again


ABLATIONS = {"sdpa": eager_attention, "batched-cameras": per_camera_vision, "prefix-trimming": whole_prefix,
             "float32-products": native_bfloat16, "onednn-products": mkl_float32, "in-place-mlp": allocating_mlp,
             "cache-in-place": copied_cache, "logit-skipping": every_logit}


TRAINING_ABLATIONS = ("sdpa", "batched-cameras", "prefix-trimming", "logit-skipping")  # those that change a training step
TRAINING_ONLY = {"logit-skipping": "pi0_fast"}  # those that change nothing else, and the variant whose training they change


def changes_inference(name: str) -> bool:
    return name not in TRAINING_ONLY


def changes_training(name: str, variant: str) -> bool:
    return name in TRAINING_ABLATIONS and TRAINING_ONLY.get(name, variant) == variant


def ablated(model, name: str, fn):
    """`fn` run with the optimisation `name` undone in `model`."""

    def run(*args, **kwargs):
        with ABLATIONS[name](model):
            return fn(*args, **kwargs)

    return run
