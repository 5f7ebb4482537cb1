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

from minnat.logprobs import logprob_dtype, scored_hidden_states
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
    batch, response_columns = response_mask.shape
    output = torch.zeros(batch, response_columns, dtype=logprob_dtype(model), device=input_ids.device)
    head = model.get_output_embeddings()
    for rows, column, hidden in scored_hidden_states(model.get_decoder(), input_ids, attention_mask,
                                                     response_mask.bool().to(input_ids.device),
                                                     overhead_tokens=micro_batch_overhead_tokens):
        output[rows, column] = entropy_from_hidden(head, hidden, temperature, chunk_size).to(output.dtype)
    return output
