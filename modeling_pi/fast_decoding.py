"""π0-FAST: next-token loss on the action postfix, and autoregressive decoding of action tokens.

The sequence is images, then a bidirectional prefix ("Task: ..., State: ...;\\n"), then a causal
postfix ("Action: " + FAST ids + "|" + EOS); `token_type_ids` marks prefix (0) and postfix (1).
Logits use the tied embedding table (or π0-FAST's own `lm_head` where the config unties it). Decoding runs
the prefix once into an HF `StaticCache` with room for every new token, then one language-model step per
new token against it. Everything here goes through the model's public methods (`embed_prefix`,
`attention_inputs`, `run_experts`, `lm_head_weight`).

Written here rather than through `GenerationMixin.generate`: the prefix attends bidirectionally over
image and prompt tokens, rows of a batch end their prompts at different lengths, and the reference
gives the first generated token the position prefill_len + 1 (one past a contiguous sequence) —
three departures from a causal LM that the loop below states directly.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .joint_attention import block_causal_mask


@dataclass
class PiFastOutput(ModelOutput):
    """
    loss (`torch.FloatTensor` of shape `()`): mean over the batch of `losses`.
    losses (`torch.FloatTensor` of shape `(batch,)`): per example, mean negative log-likelihood of its target tokens.
    logits (`torch.FloatTensor` of shape `(batch, prompt length, vocab)`): next-token logits at each prompt position;
        None from a training pass called with `output_logits=False`.
    """

    loss: torch.FloatTensor | None = None
    losses: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


def fast_forward(
    model, pixel_values, pixel_attention_mask, input_ids, attention_mask, token_type_ids, labels, output_logits=True
) -> PiFastOutput:
    """Prefix-LM pass; with `labels`, the per-example mean NLL of each target given the tokens before it.

    Without `output_logits` (training), the head runs only where a target is read, and the trailing
    prompt slots that no row fills or labels stay out of the pass: nothing reads them."""
    roles = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    if not output_logits:
        input_ids, attention_mask, roles, labels = drop_unread_slots(input_ids, attention_mask, roles, labels)
    prefix, valid = model.embed_prefix(pixel_values, pixel_attention_mask, input_ids, attention_mask)
    ar = torch.cat([roles.new_zeros(valid.shape[0], valid.shape[1] - roles.shape[1]), roles], dim=1)
    attention = model.attention_inputs(block_causal_mask(valid, ar), valid.long().cumsum(1) - 1, prefix)
    hidden, _ = model.run_experts(prefix, None, *attention)
    hidden = hidden[:, -input_ids.shape[1] :]
    head = model.lm_head_weight()
    logits = F.linear(hidden, head) if output_logits else None
    if labels is None:
        return PiFastOutput(logits=logits)
    losses = token_losses(hidden, labels, head, logits)
    return PiFastOutput(loss=losses.mean(), losses=losses, logits=logits)


def token_losses(hidden: torch.Tensor, labels: torch.Tensor, head: torch.Tensor, logits: torch.Tensor | None = None):
    """Per example [B], the mean negative log-likelihood of its targets: `labels` [B, L] (-100 where none), read
    with the output `head` [V, D] from `hidden` [B, L, D], position t predicting target t + 1 (from `logits`
    [B, L, V] where already computed, else only where a target is read)."""
    targets = labels[:, 1:]
    read = targets != -100
    scores = logits[:, :-1][read] if logits is not None else F.linear(hidden[:, :-1][read], head)
    nll = F.cross_entropy(scores.float(), targets[read], reduction="none")
    rows = read.nonzero()[:, 0]
    return nll.new_zeros(len(labels)).index_add(0, rows, nll) / read.sum(dim=1).clamp(min=1)


def drop_unread_slots(input_ids, attention_mask, token_type_ids, labels) -> tuple[torch.Tensor, ...]:
    """The four without the prompt's trailing slots that are padding in every row and carry no label."""
    used = (attention_mask.bool() | (labels != -100)).any(dim=0).nonzero()
    keep = int(used.max()) + 1 if len(used) else 1
    return input_ids[:, :keep], attention_mask[:, :keep], token_type_ids[:, :keep], labels[:, :keep]


def choose_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """[B, V] logits -> [B] ids: the argmax when `temperature` is 0, else a sample at that temperature."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def decode_step(model, token_embeds: torch.Tensor, positions: torch.Tensor, seen: torch.Tensor, cache) -> torch.Tensor:
    """One new token per row [B, 1, D] at `positions` [B, 1], attending to the cache slots marked in `seen`
    [B, S] (the valid prefix tokens and the tokens generated so far, this one included): its hidden state [B, D]."""
    attention = model.attention_inputs(seen[:, None, :], positions, token_embeds)
    hidden, _ = model.run_experts(token_embeds, None, *attention, cache=cache)
    return hidden[:, -1]


@torch.no_grad()
def decode_fast(
    model,
    run,
    pixel_values: torch.Tensor,
    pixel_attention_mask: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    allowed_token_ids: torch.Tensor | None = None,
    reference_positions: bool = True,
) -> torch.Tensor:
    """Generated ids [B, T]; rows that emitted EOS are padded after it; stops once every row has.

    `run` (`model.generation_runtime()`) gives the prefix pass, the step and the cache: static, sized for the
    prefix and every token the call may generate, its slots not yet written masked.
    """
    config = model.config.text_config
    batch, cameras = pixel_attention_mask.shape
    prefix_len = cameras * model.config.num_image_tokens + input_ids.shape[1]
    cache = run.cache(batch, prefix_len + max_new_tokens)
    last, valid = run.prefix(pixel_values, pixel_attention_mask, input_ids, attention_mask, cache=cache, outputs="last")
    seen = F.pad(valid, (0, max_new_tokens), value=False)

    # Constrained decoding scores only the allowed rows of the head: the same choice as masking
    # every other logit to -inf, at a fraction of the cost of the full-vocabulary head.
    head = model.lm_head_weight()
    if allowed_token_ids is not None:
        allowed_token_ids = allowed_token_ids.to(valid.device)
        head = head[allowed_token_ids]
    # The first generated token sits at prefill_len (+1 in the reference), each next one a step further.
    next_position = valid.sum(dim=1, keepdim=True) + int(reference_positions)
    finished = torch.zeros(batch, dtype=torch.bool, device=valid.device)
    generated = []
    for step in range(max_new_tokens):
        choice = choose_token(F.linear(last, head).float(), temperature, generator)
        token = choice if allowed_token_ids is None else allowed_token_ids[choice]
        token = token.masked_fill(finished, config.pad_token_id)
        generated.append(token)
        finished |= token == config.eos_token_id
        if finished.all() or step == max_new_tokens - 1:
            break
        seen[:, prefix_len + step] = True  # the new token attends to every valid prefix token and every generated one
        embed = model.language_model.embed_tokens(token[:, None])
        last = run.output(run.step(embed, next_position, seen, cache))
        next_position = next_position + 1
    return torch.stack(generated, dim=1)
