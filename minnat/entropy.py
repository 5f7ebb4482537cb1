"""Per-token entropies of the current policy at the response positions (for the top-entropy contrast).

The top-entropy contrast (`minnat.nat.select_tokens_biased(..., "top-entropy")`, TRL's
`top_entropy_quantile`, arXiv 2506.01939) keeps the response tokens where the policy is most
uncertain. It needs, at every response position t of row i, the entropy of the next-token
distribution the token was sampled from (at the sampling temperature τ):

    z = head(h_{i,t}) / τ,    H_{i,t} = −Σ_v p_v log p_v = logsumexp(z) − Σ_v softmax(z)_v · z_v

Like `minnat.logprobs`, the logits are never materialised for the whole [B, T, V] block: the
decoder runs on length-grouped micro-batches (`plan_micro_batches`) and the LM head on chunks
of positions, so at most [chunk_size, V] logits exist at a time. No gradient flows: the
selection is a mask, not part of the loss — which is exactly why it is biased (its law depends
on θ, and it drops the low-entropy tokens for good).

Shapes: input_ids, attention_mask [B, P + T]; response_mask bool [B, T]; output float [B, T], 0 off the response.
"""
from __future__ import annotations

import torch

from minnat.logprobs import check_contiguous_spans, logprob_dtype, needed_columns, packed_inputs, plan_micro_batches
from minnat.nat import check_response_mask


def entropy_from_hidden(head: torch.nn.Module, hidden: torch.Tensor, temperature: float = 1.0,
                        chunk_size: int = 256) -> torch.Tensor:
    """H of softmax(head(h)/τ) for hidden [K, H] -> float [K], chunk_size positions at a time."""
    pieces = []
    for begin in range(0, hidden.shape[0], chunk_size):
        logits = head(hidden[begin:begin + chunk_size])
        logits = logits.double() if logits.dtype == torch.float64 else logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        log_probs = torch.log_softmax(logits, dim=1)
        pieces.append(-(log_probs.exp() * log_probs).sum(dim=1))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


@torch.no_grad()
def response_entropies(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                       *, temperature: float = 1.0, chunk_size: int = 256,
                       micro_batch_overhead_tokens: int = 128) -> torch.Tensor:
    """H_{i,t} of π_θ(· | q, o_<t) at every response token -> float [B, T] (0 on padding).

    model           a causal LM with `get_decoder()` and `get_output_embeddings()` (as `response_logprobs`)
    input_ids       long [B, P + T]: left-padded prompt, then right-padded response
    attention_mask  [B, P + T]
    response_mask   bool [B, T]
    temperature     τ of the sampling, as TRL divides the logits by it before the entropy
    """
    check_response_mask(response_mask)
    batch, total = input_ids.shape
    response_columns = response_mask.shape[1]
    prompt_columns = total - response_columns
    device = input_ids.device
    mask = response_mask.bool().to(device)
    attention_mask = attention_mask.long()
    starts, ends = needed_columns(attention_mask, mask)  # first real token .. the column before the last
    check_contiguous_spans(attention_mask, starts, ends)
    output = torch.zeros(batch, response_columns, dtype=logprob_dtype(model), device=device)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    for micro in plan_micro_batches(starts, ends, overhead_tokens=micro_batch_overhead_tokens):
        rows = micro.rows.to(device)
        ids, positions = packed_inputs(input_ids, starts, micro)  # spans moved to column 0, as in minnat.logprobs
        hidden = decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        local_row, column = mask[rows].nonzero(as_tuple=True)
        # The hidden state at column j predicts column j + 1 (as in `minnat.logprobs`).
        values = entropy_from_hidden(head, hidden[local_row, prompt_columns + column - 1 - starts[rows[local_row]]],
                                     temperature, chunk_size)
        output[rows[local_row], column] = values.to(output.dtype)
    return output
