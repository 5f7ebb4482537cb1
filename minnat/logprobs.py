"""Log-probabilities of the response tokens, computed only where the NAT selection needs them.

The policy-gradient loss needs log π_θ(o_t | q, o_<t) for the kept response tokens. Where
the saving comes from depends on the selection:

* full: a forward over prompt + response.
* URS:  kept tokens are scattered, so every position's hidden state is still needed (later
        kept tokens attend to dropped ones). The transformer body runs over the whole
        sequence; the LM head (H × V, V ≈ 151k for Qwen) and the log-softmax run only at kept
        positions. That is URS's saving — large for a big vocabulary, nothing else.
* RPC:  only the prefix o_1..o_C is kept, and under causal attention the hidden state at
        position t depends on positions ≤ t alone. So the model is given prompt + the first
        C − 1 response tokens (the last kept token is a target, never an input) and nothing
        else: forward and backward are physically shorter. Rows are sorted by the length they
        need and grouped into micro-batches, so padding to the longest cut does not eat the
        saving (`plan_micro_batches`).

Layout (what Hugging Face `generate` returns): input_ids [B, P + T], the first P columns a
left-padded prompt, the last T columns the right-padded response. The hidden state at
column j predicts the token at column j + 1, so response column t (token o_{t+1}) is scored
from column P + t − 1. Position ids come from the attention mask (cumsum − 1), so left
padding and trimmed columns do not shift positions: the kept log-probs equal the full
path's to float tolerance.

Memory: logits are never materialised for the whole [B, T, V] block. The LM head and the
log-softmax run on chunks of scored positions; under autograd each chunk is recomputed in
the backward pass (activation checkpointing), so only the [K, H] hidden states are kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from minnat.nat import Selection, check_response_mask


@dataclass
class LogprobStats:
    """What one `response_logprobs` call gave to the model (for benchmarks and tests)."""

    tokens_to_model: int = 0        # rows × columns of every tensor passed to the transformer (padding included)
    real_tokens_to_model: int = 0   # the part each row needs: its first real token up to its last scored one
    positions_scored: int = 0       # positions that went through the LM head and log-softmax
    micro_batches: int = 0
    micro_batch_shapes: list = field(default_factory=list)


@dataclass
class MicroBatch:
    rows: torch.Tensor   # long [b]: which batch rows
    start: int           # first column given to the model
    end: int             # one past the last column given to the model


def plan_micro_batches(starts: torch.Tensor, ends: torch.Tensor, *, max_rows: int | None = None,
                       overhead_tokens: int = 128) -> list[MicroBatch]:
    """Group rows that need columns [start_b, end_b) into micro-batches, trading padding for passes.

    A micro-batch of rows R costs |R| × (max end − min start) padded tokens, and every extra
    forward pass costs a fixed overhead (kernel launches, Python) worth about `overhead_tokens`
    tokens. Rows sorted by needed length are split into contiguous groups that minimise

        Σ_groups ( |R_g| × width_g + overhead_tokens )

    by dynamic programming (O(B²), B = rows). overhead_tokens = 0 gives one pass per distinct
    length and no padding at all; a huge value gives one pass padded to the longest row. The
    default, 128, is about one pass's fixed cost in tokens both for the tiny model on a CPU
    and for an 8B model on a GPU; on 64 ragged responses it gives ~4 passes and ~15% padding.
    Rows with end ≤ start need nothing and are skipped.
    """
    lengths = (ends - starts).tolist()
    order = sorted((row for row in range(len(lengths)) if lengths[row] > 0), key=lambda row: lengths[row])
    if not order:
        return []
    count = len(order)
    row_starts = [int(starts[row]) for row in order]
    row_ends = [int(ends[row]) for row in order]
    best = [0.0] + [float("inf")] * count  # best[j]: cheapest plan for the first j sorted rows
    cut_before = [0] * (count + 1)
    for last in range(1, count + 1):
        group_start, group_end = row_starts[last - 1], row_ends[last - 1]
        for first in range(last, 0, -1):  # the group is sorted rows first..last (1-based)
            size = last - first + 1
            if max_rows is not None and size > max_rows:
                break
            group_start = min(group_start, row_starts[first - 1])
            group_end = max(group_end, row_ends[first - 1])
            cost = best[first - 1] + size * (group_end - group_start) + overhead_tokens
            if cost < best[last]:
                best[last], cut_before[last] = cost, first - 1
    batches, last = [], count
    while last > 0:
        first = cut_before[last]
        rows = order[first:last]
        batches.append(MicroBatch(rows=torch.tensor(rows, dtype=torch.long),
                                  start=min(row_starts[first:last]), end=max(row_ends[first:last])))
        last = first
    return batches[::-1]


def _score_hidden(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """log softmax(head(h) / temperature)[target] for hidden [K, H], targets [K] -> float32 [K].

    Half-precision logits are upcast chunk by chunk (the log-softmax needs float32 accuracy);
    float64 models stay in float64.
    """
    logits = head(hidden)
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=1)


def score_positions(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, *,
                    temperature: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """Chunked, recompute-in-backward log-probs of `targets` [K] from `hidden` [K, H] -> float32 [K]."""
    pieces = []
    for begin in range(0, hidden.shape[0], chunk_size):
        chunk_hidden, chunk_targets = hidden[begin:begin + chunk_size], targets[begin:begin + chunk_size]
        if torch.is_grad_enabled() and chunk_hidden.requires_grad:
            pieces.append(checkpoint(_score_hidden, head, chunk_hidden, chunk_targets, temperature,
                                     use_reentrant=False))
        else:
            pieces.append(_score_hidden(head, chunk_hidden, chunk_targets, temperature))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def logprob_dtype(model) -> torch.dtype:
    """float32 for half/float32 models, float64 for float64 ones (exactness tests)."""
    return torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32


def _check_inputs(input_ids, attention_mask, response_mask, selection):
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be [batch, prompt + response]; got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}.")
    check_response_mask(response_mask)
    batch, total = input_ids.shape
    if response_mask.shape[0] != batch or response_mask.shape[1] >= total:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} must have the batch size of input_ids "
                         f"{tuple(input_ids.shape)} and fewer columns (the prompt comes first, at least one "
                         "column long).")
    if selection is None:
        return
    if selection.keep.shape != response_mask.shape:
        raise ValueError(f"selection.keep has shape {tuple(selection.keep.shape)} but response_mask has "
                         f"{tuple(response_mask.shape)}; draw the selection from this response_mask.")
    if bool((selection.keep & ~response_mask.bool()).any()):
        raise ValueError("selection keeps tokens outside response_mask; draw it from this response_mask.")
    if selection.method == "rpc":
        columns = torch.arange(response_mask.shape[1], device=response_mask.device)
        if not torch.equal(selection.keep, columns.unsqueeze(0) < selection.cut_lengths.unsqueeze(1)):
            raise ValueError("an RPC selection must keep a prefix of each response (keep = columns < cut).")


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor, selection: Selection | None = None, *,
                      temperature: float = 1.0, max_rows_per_micro_batch: int | None = None,
                      micro_batch_overhead_tokens: int = 128, head_chunk_size: int = 1024,
                      stats: LogprobStats | None = None) -> torch.Tensor:
    """log π_θ(o_t | q, o_<t) at the response tokens the selection keeps -> float [B, T].

    model           a causal LM with `get_decoder()` and `get_output_embeddings()` (Qwen3ForCausalLM)
    input_ids       long [B, P + T]: left-padded prompt, then right-padded response
    attention_mask  [B, P + T]: 1 on real prompt and response tokens
    response_mask   bool [B, T]: the response tokens (first L_b columns of row b)
    selection       None or method "full": every response token; "urs": LM head only at kept
                    positions; "rpc": the model only sees prompt + kept prefix
    temperature     the sampling temperature, so that log π matches the distribution sampled from
    micro_batch_overhead_tokens  what one extra forward pass is worth in tokens (see
                    `plan_micro_batches`); 0 = no padding at all, many passes
    stats           if given, filled with what was passed to the model

    Positions not kept are 0 in the output (float32, or float64 for a float64 model).
    """
    _check_inputs(input_ids, attention_mask, response_mask, selection)
    stats = stats if stats is not None else LogprobStats()
    batch, total = input_ids.shape
    response_columns = response_mask.shape[1]
    prompt_columns = total - response_columns
    device = input_ids.device
    scored = response_mask.bool() if selection is None else selection.keep.to(device)
    attention_mask = attention_mask.long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)

    # Columns each row needs: from its first real token to the column before its last scored token.
    first_real = torch.where(attention_mask.bool(), torch.arange(total, device=device),
                             torch.full_like(attention_mask, total)).amin(dim=1)
    columns = torch.arange(response_columns, device=device)
    last_scored_plus_one = torch.where(scored, columns + 1, torch.zeros_like(columns)).amax(dim=1) \
        if response_columns else torch.zeros(batch, dtype=torch.long, device=device)
    ends = torch.where(last_scored_plus_one > 0, prompt_columns + last_scored_plus_one - 1,
                       torch.zeros_like(last_scored_plus_one))
    starts = torch.minimum(first_real, ends)

    # Every method goes through the same length-grouping planner, so that full and URS get the
    # same padding savings and RPC's advantage is only what its cut removes. For full and URS a
    # row needs every column up to its last scored token (for URS that is nearly the whole
    # response: a kept token near the end needs every column before it).
    micro_batches = plan_micro_batches(starts, ends, max_rows=max_rows_per_micro_batch,
                                       overhead_tokens=micro_batch_overhead_tokens)

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    row_indices, column_indices, values = [], [], []
    for micro in micro_batches:
        rows = micro.rows.to(device)
        ids = input_ids[rows, micro.start:micro.end]
        mask = attention_mask[rows, micro.start:micro.end]
        positions = position_ids[rows, micro.start:micro.end]
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=False).last_hidden_state
        stats.tokens_to_model += ids.numel()
        stats.real_tokens_to_model += int((ends[rows] - starts[rows]).sum())
        stats.micro_batches += 1
        stats.micro_batch_shapes.append(tuple(ids.shape))

        local_row, response_column = scored[rows].nonzero(as_tuple=True)
        hidden_column = prompt_columns + response_column - 1 - micro.start
        targets = input_ids[rows[local_row], prompt_columns + response_column]
        values.append(score_positions(head, hidden[local_row, hidden_column], targets,
                                      temperature=temperature, chunk_size=head_chunk_size))
        row_indices.append(rows[local_row])
        column_indices.append(response_column)
        stats.positions_scored += int(targets.numel())

    output = torch.zeros(batch, response_columns, dtype=logprob_dtype(model), device=device)
    if values:
        output = output.index_put((torch.cat(row_indices), torch.cat(column_indices)), torch.cat(values))
    return output
