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
from column P + t − 1.

Packing: row b needs the contiguous columns [s_b, e_b) from its first real token to the
column before its last scored token. Each micro-batch copies those spans to the left of a
[b, max_b(e_b − s_b)] tensor, position ids 0, 1, … (what cumsum − 1 of the attention mask
gives them in the original layout), and pads on the right. Under causal attention a token
never sees a later column, so right padding needs no attention mask: the decoder runs with
`is_causal` attention and no [b, 1, S, S] mask is built or held for backward, and rows whose
prompts were left-padded by different amounts pad nothing extra. The kept log-probs equal
the left-padded full path's to float tolerance.

Memory: the LM head and the log-softmax run in tiles bounded in positions AND vocabulary
(`TiledHeadLogprob`). For K scored positions, hidden size H and vocabulary V,

    log π(y_k) = z_{k,y_k}/τ − LSE_v(z_{k,v}/τ),    z = h Wᵀ + b,    W [V, H]

is computed tile by tile: a [k, n] block of logits (k ≤ position tile, n ≤ vocabulary tile)
is folded into a running maximum and a running Σ exp (the online log-sum-exp), so the forward
keeps only hidden [K, H] and the LSE [K]. The backward recomputes each tile and turns it into
the logits gradient in place,

    ∂ log π(y_k) / ∂z_{k,v} = (δ_{v,y_k} − p_{k,v}) / τ,    p_{k,v} = exp(z_{k,v}/τ − LSE_k),

then accumulates ∂h += G_tile W_tile and ∂W_tile += G_tileᵀ h (G = g_k·(δ − p)/τ, g_k the
incoming gradient). The arithmetic, for Qwen's V = 151,936, H = 512, float32:

* the previous design (1024 positions × the whole vocabulary, recomputed in backward by
  activation checkpointing): one logits block is 1024 × 151,936 × 4 B = 622 MB, and the
  recomputation holds the block, its exp temporary and the logits gradient at once: ~1.9 GB.
* tiles (defaults from `head_tile_sizes`: 319 positions × 15,232 vocabulary): one tile is
  19 MB; the backward holds about two (the logits tile becoming its gradient in place, plus a
  cast copy for half-precision weights), plus ∂h [K, H]: tens of MB, whatever K and V are.

FLOPs are the previous design's: forward 2KHV, backward 2KHV (the recomputation) + 4KHV.

Why recompute, rather than compute the head's gradient in the forward pass as Liger's fused
linear losses do: that needs g_k = ∂loss/∂log π(y_k) during the forward, i.e. the loss fused
into the head. Here the log-probs go on to an arbitrary loss (the clipped ratio against
log π_old, the k3 KL, the HT weights, TRL's or verl's losses), so g_k exists only in the
backward. Computing just ∂log π/∂h in the forward would not help: ∂W = Σ_k g_k (δ − p_k) h_kᵀ/τ
still needs p_k again in the backward, so the tiles are recomputed anyway, and [K, H] more
is held. Recomputation costs one extra head matmul (2KHV) and keeps the API: log-probs in,
any loss out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint

try:
    from torch.distributed.tensor import DTensor  # FSDP2's sharded parameters
except ImportError:  # a torch built without distributed
    DTensor = None

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
    width: int           # columns given to the model: the longest needed span of these rows


def plan_micro_batches(starts: torch.Tensor, ends: torch.Tensor, *, max_rows: int | None = None,
                       overhead_tokens: int = 128) -> list[MicroBatch]:
    """Group rows that need spans of n_b = end_b − start_b columns into micro-batches, trading
    padding for passes.

    A micro-batch of rows R is packed to its longest span (see the module doc), so it costs
    |R| × max_{b∈R} n_b tokens, and every extra forward pass costs a fixed overhead (kernel
    launches, Python) worth about `overhead_tokens` tokens. Rows sorted by n_b are split into
    contiguous groups that minimise

        Σ_groups ( |R_g| × max_{b∈R_g} n_b + overhead_tokens )

    by dynamic programming (O(B²), B = rows). overhead_tokens = 0 gives one pass per distinct
    length and no padding at all; a huge value gives one pass padded to the longest row. The
    right value is one pass's fixed cost on your model and device: `python -m minnat.bench
    --micro-batch-overhead-tokens auto` measures it (≈ 40 for the embedded long-addition model
    on one CPU thread). Rows with end ≤ start need nothing and are skipped.
    """
    lengths = (ends - starts).tolist()
    order = sorted((row for row in range(len(lengths)) if lengths[row] > 0), key=lambda row: lengths[row])
    if not order:
        return []
    count = len(order)
    sorted_lengths = [lengths[row] for row in order]
    best = [0.0] + [float("inf")] * count  # best[j]: cheapest plan for the first j sorted rows
    cut_before = [0] * (count + 1)
    for last in range(1, count + 1):
        width = sorted_lengths[last - 1]  # sorted: the group's last row is its longest
        for first in range(last, 0, -1):  # the group is sorted rows first..last (1-based)
            size = last - first + 1
            if max_rows is not None and size > max_rows:
                break
            cost = best[first - 1] + size * width + overhead_tokens
            if cost < best[last]:
                best[last], cut_before[last] = cost, first - 1
    batches, last = [], count
    while last > 0:
        first = cut_before[last]
        batches.append(MicroBatch(rows=torch.tensor(order[first:last], dtype=torch.long),
                                  width=sorted_lengths[last - 1]))
        last = first
    return batches[::-1]


def packed_inputs(input_ids: torch.Tensor, starts: torch.Tensor, micro: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [b, W], position_ids [b, W]) of one micro-batch: row b's span input_ids[b, s_b:s_b + W]
    moved to column 0 (W = micro.width), positions 0..W−1. Columns past a row's own span hold
    whatever follows it (later tokens or padding): causal attention keeps them out of every
    needed position, so no attention mask is needed."""
    rows = micro.rows.to(input_ids.device)
    offsets = torch.arange(micro.width, device=input_ids.device)
    columns = (starts[rows].unsqueeze(1) + offsets).clamp(max=input_ids.shape[1] - 1)
    return input_ids[rows.unsqueeze(1), columns], offsets.expand(len(rows), -1)


def check_contiguous_spans(attention_mask: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> None:
    """Packing assumes each row's needed span is all real tokens (left-padded prompt, then the
    response up to its EOS); refuse an attention mask with holes inside it rather than attend to them."""
    real = torch.cat([torch.zeros_like(attention_mask[:, :1]), attention_mask.cumsum(dim=1)], dim=1)
    in_span = real.gather(1, ends.unsqueeze(1)) - real.gather(1, starts.unsqueeze(1))
    if bool((in_span.squeeze(1) != ends - starts).any()):
        raise ValueError("attention_mask has zeros between a row's first real token and its last response token; "
                         "minnat expects a left-padded prompt followed by the response (padding only after "
                         "its end), as `generate` returns.")


def scored_hidden_states(decoder, input_ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor, *,
                         max_rows: int | None = None, overhead_tokens: int = 128,
                         stats: LogprobStats | None = None):
    """Run the decoder on packed micro-batches and yield, per micro-batch, the hidden states that
    predict the scored response tokens: (rows [k], response_column [k], hidden [k, H]), where
    hidden[k] predicts input_ids[rows[k], P + response_column[k]].

    input_ids, attention_mask [B, P + T] (left-padded prompt, right-padded response); scored bool
    [B, T]. Each row is given the columns from its first real token to the one before its last
    scored token (`needed_columns`), grouped by `plan_micro_batches` and packed by
    `packed_inputs`; what the model was given is added to `stats` when one is passed.
    """
    attention_mask = attention_mask.long()
    prompt_columns = input_ids.shape[1] - scored.shape[1]
    starts, ends = needed_columns(attention_mask, scored)
    check_contiguous_spans(attention_mask, starts, ends)
    for micro in plan_micro_batches(starts, ends, max_rows=max_rows, overhead_tokens=overhead_tokens):
        rows = micro.rows.to(input_ids.device)
        ids, positions = packed_inputs(input_ids, starts, micro)
        hidden = decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        if stats is not None:
            stats.tokens_to_model += ids.numel()
            stats.real_tokens_to_model += int((ends[rows] - starts[rows]).sum())
            stats.micro_batches += 1
            stats.micro_batch_shapes.append(tuple(ids.shape))
        local_row, response_column = scored[rows].nonzero(as_tuple=True)
        # Packed column of the hidden state at original column P + t − 1, which predicts column P + t.
        hidden_column = prompt_columns + response_column - 1 - starts[rows[local_row]]
        yield rows[local_row], response_column, hidden[local_row, hidden_column]


def head_tile_sizes(hidden_size: int, vocab_size: int) -> tuple[int, int]:
    """Default (position tile, vocabulary tile) of the LM head, from H and V.

    The vocabulary is split into ⌈V / 16,384⌉ equal tiles (a multiple of 128 wide, for the
    matmul kernels), and a tile holds at most max(2²², V·H/16) logits: 16 MB in float32, or a
    sixteenth of the head's weight matrix when that is larger. The backward holds about two
    tiles, so the head's transient memory stays at ~1/8 of its own weight gradient (or 32 MB)
    however many positions are scored, while the tiles stay large enough (≥ 64 positions ×
    ≥ 128 columns × H) for efficient matrix products. Examples: H = 512, V = 151,936 gives
    319 × 15,232 (19 MB); Qwen3-8B (H = 4096) gives 2,553 × 15,232; a 100-token vocabulary
    gives 4,096 × 100.
    """
    if hidden_size < 1 or vocab_size < 1:
        raise ValueError(f"hidden size and vocabulary must be positive; got {hidden_size} and {vocab_size}.")
    tiles = math.ceil(vocab_size / 16_384)
    vocab_tile = min(vocab_size, 128 * math.ceil(vocab_size / tiles / 128))
    budget = max(2 ** 22, vocab_size * hidden_size // 16)
    position_tile = max(64, min(4096, budget // vocab_tile))
    return position_tile, vocab_tile


def _vocabulary_tiles(vocab_size: int, vocab_tile: int):
    return [(begin, min(begin + vocab_tile, vocab_size)) for begin in range(0, vocab_size, vocab_tile)]


class TiledHeadLogprob(torch.autograd.Function):
    """log softmax(h Wᵀ + b)/τ at the targets, in [position tile × vocabulary tile] blocks (see the module doc).

    hidden [K, H] (model dtype), weight [V, H], bias [V] or None, targets long [K] -> [K] in the
    accumulation dtype (float64 for float64 models, else float32). Logits of half-precision
    models are upcast tile by tile, as the log-softmax needs float32 accuracy.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, position_tile: int, vocab_tile: int):
        accumulate = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        count = hidden.shape[0]
        running_max = torch.full((count,), float("-inf"), dtype=accumulate, device=hidden.device)
        running_sum = torch.zeros(count, dtype=accumulate, device=hidden.device)
        target_logit = torch.zeros(count, dtype=accumulate, device=hidden.device)
        for vocab_begin, vocab_end in _vocabulary_tiles(weight.shape[0], vocab_tile):
            in_tile = (targets >= vocab_begin) & (targets < vocab_end)
            for begin in range(0, count, position_tile):
                end = min(begin + position_tile, count)
                logits = _tile_logits(hidden[begin:end], weight, bias, vocab_begin, vocab_end, temperature,
                                      accumulate)
                rows = in_tile[begin:end].nonzero(as_tuple=True)[0]
                target_logit[begin + rows] = logits[rows, targets[begin + rows] - vocab_begin]
                # Online log-sum-exp: rescale the running sum to the new maximum, add this tile's exp-sum.
                new_max = torch.maximum(running_max[begin:end], logits.amax(dim=1))
                running_sum[begin:end] *= torch.exp(running_max[begin:end] - new_max)
                running_sum[begin:end] += logits.sub_(new_max.unsqueeze(1)).exp_().sum(dim=1)
                running_max[begin:end] = new_max
        log_normaliser = running_max + torch.log(running_sum)
        ctx.save_for_backward(hidden, weight, bias, targets, log_normaliser)
        ctx.temperature, ctx.position_tile, ctx.vocab_tile = temperature, position_tile, vocab_tile
        return target_logit - log_normaliser

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logprob):
        hidden, weight, bias, targets, log_normaliser = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        accumulate = log_normaliser.dtype
        scale = grad_logprob.to(accumulate) / ctx.temperature  # g_k / τ
        count = hidden.shape[0]
        grad_hidden = torch.zeros(hidden.shape, dtype=accumulate, device=hidden.device) if needs_hidden else None
        grad_weight = torch.zeros_like(weight) if needs_weight else None
        grad_bias = torch.zeros_like(bias) if needs_bias else None
        same_dtype = weight.dtype == accumulate  # float32/float64 models: accumulate in place, no copies
        for vocab_begin, vocab_end in _vocabulary_tiles(weight.shape[0], ctx.vocab_tile):
            weight_tile = weight[vocab_begin:vocab_end]
            in_tile = (targets >= vocab_begin) & (targets < vocab_end)
            # ∂W of this vocabulary tile, summed over the position tiles in the accumulation dtype.
            weight_tile_grad = None
            if needs_weight:
                weight_tile_grad = grad_weight[vocab_begin:vocab_end] if same_dtype else \
                    torch.zeros(weight_tile.shape, dtype=accumulate, device=weight.device)
            for begin in range(0, count, ctx.position_tile):
                end = min(begin + ctx.position_tile, count)
                logits = _tile_logits(hidden[begin:end], weight, bias, vocab_begin, vocab_end, ctx.temperature,
                                      accumulate)
                # G = g/τ · (δ_{v,y} − p), built in place in the logits tile.
                grad_logits = logits.sub_(log_normaliser[begin:end].unsqueeze(1)).exp_()
                grad_logits.mul_(-scale[begin:end].unsqueeze(1))
                rows = in_tile[begin:end].nonzero(as_tuple=True)[0]
                grad_logits[rows, targets[begin + rows] - vocab_begin] += scale[begin + rows]
                if needs_bias:
                    grad_bias[vocab_begin:vocab_end] += grad_logits.sum(dim=0).to(bias.dtype)
                if same_dtype:
                    if needs_hidden:
                        grad_hidden[begin:end].addmm_(grad_logits, weight_tile)
                    if needs_weight:
                        weight_tile_grad.addmm_(grad_logits.t(), hidden[begin:end])
                    continue
                grad_in_model_dtype = grad_logits.to(weight.dtype)
                if needs_hidden:
                    grad_hidden[begin:end] += torch.mm(grad_in_model_dtype, weight_tile).to(accumulate)
                if needs_weight:
                    weight_tile_grad += torch.mm(grad_in_model_dtype.t(), hidden[begin:end]).to(accumulate)
            if needs_weight and not same_dtype:
                grad_weight[vocab_begin:vocab_end] = weight_tile_grad
        grad_hidden = grad_hidden.to(hidden.dtype) if needs_hidden else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _tile_logits(hidden_tile, weight, bias, vocab_begin, vocab_end, temperature, accumulate):
    """(h W[v₀:v₁]ᵀ + b[v₀:v₁]) / τ for one tile -> [k, v₁ − v₀] in the accumulation dtype (a fresh tensor)."""
    logits = torch.mm(hidden_tile, weight[vocab_begin:vocab_end].t())
    if bias is not None:
        logits += bias[vocab_begin:vocab_end]
    logits = logits.to(accumulate)
    if temperature != 1.0:
        logits.div_(temperature)
    return logits


def head_weight_is_sharded(head: torch.nn.Module) -> bool:
    """True when a sharding engine keeps the LM head's weight partitioned outside the head's own
    forward, so it can only be used by calling the head: DeepSpeed ZeRO-3 (a parameter with
    `ds_id`, an empty placeholder until a module hook gathers it; tested) or a torch DTensor
    (FSDP2 with the head sharded on its own; tests/test_fsdp2.py runs FSDP2 with the head inside the
    root module, whose pre-forward hook gathers it, so this branch stays untested there)."""
    weight = getattr(head, "weight", None)
    if weight is None:
        return False
    return hasattr(weight, "ds_id") or (DTensor is not None and isinstance(weight, DTensor))


def _chunk_logprob_through_module(head, hidden, targets, temperature: float, accumulate: torch.dtype):
    logits = head(hidden).to(accumulate)  # [k, V]: calling the module lets ZeRO-3 / FSDP gather the weight
    return (logits / temperature).log_softmax(dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)


def score_positions_through_module(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, *,
                                   temperature: float = 1.0, position_tile: int | None = None) -> torch.Tensor:
    """`score_positions` for a head whose weight is sharded (see `head_weight_is_sharded`).

    hidden [K, H], targets long [K] -> [K] (float32; float64 for float64 models). The head module
    is called on chunks of positions × the whole vocabulary, each under activation checkpointing
    (non-reentrant): the forward keeps only the chunk's hidden states, and the backward calls the
    head again, so a sharding engine gathers the weight for the recomputation exactly as it does
    for any checkpointed layer, and reduces its gradient the usual way. Memory: one [k, V] logits
    chunk and its gradient, k = position_tile (default: max(1, max(2²², V·H/16) // V), e.g. 64 for
    Qwen3-0.6B's V = 151,936, H = 1024). FLOPs as the tiled path's: the head runs twice forward.
    """
    accumulate = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    vocab, width = head.out_features, head.in_features
    position_tile = position_tile or max(1, max(2 ** 22, vocab * width // 16) // vocab)
    pieces = []
    for begin in range(0, hidden.shape[0], position_tile):
        chunk = (head, hidden[begin:begin + position_tile], targets[begin:begin + position_tile],
                 float(temperature), accumulate)
        if torch.is_grad_enabled():
            pieces.append(torch.utils.checkpoint.checkpoint(_chunk_logprob_through_module, *chunk,
                                                            use_reentrant=False))
        else:
            pieces.append(_chunk_logprob_through_module(*chunk))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=accumulate)


def score_positions(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, *,
                    temperature: float = 1.0, position_tile: int | None = None,
                    vocab_tile: int | None = None, through_module: bool | None = None) -> torch.Tensor:
    """log softmax(head(h) / τ)[target] for hidden [K, H], targets long [K] -> float32 [K] (float64 models: float64).

    The head must be a linear layer (`get_output_embeddings()` of a Hugging Face causal LM);
    its logits are computed in tiles (`TiledHeadLogprob`), sized by `head_tile_sizes` unless
    given, and never materialised for more than one tile at a time. A head whose weight a
    sharding engine partitions (DeepSpeed ZeRO-3, FSDP2) is called as a module instead
    (`score_positions_through_module`); `through_module` forces either path (None = choose).
    """
    weight = getattr(head, "weight", None)
    if not isinstance(head, torch.nn.Linear) or weight is None:
        raise ValueError(f"the LM head must be a torch.nn.Linear (a causal LM's get_output_embeddings()); got "
                         f"{type(head).__name__}. Wrap a custom head in nn.Linear or score its logits yourself.")
    if hidden.shape[0] != targets.shape[0] or hidden.dim() != 2:
        raise ValueError(f"hidden must be [K, H] with one target per row; got {tuple(hidden.shape)} and "
                         f"{tuple(targets.shape)}.")
    if temperature <= 0:
        raise ValueError(f"the temperature must be positive; got {temperature}.")
    if through_module if through_module is not None else head_weight_is_sharded(head):
        return score_positions_through_module(head, hidden.to(weight.dtype), targets, temperature=temperature,
                                              position_tile=position_tile)
    default_positions, default_vocab = head_tile_sizes(weight.shape[1], weight.shape[0])
    position_tile, vocab_tile = position_tile or default_positions, vocab_tile or default_vocab
    if position_tile < 1 or vocab_tile < 1:
        raise ValueError(f"head tiles must be at least 1 wide; got {position_tile} positions × {vocab_tile} tokens.")
    return TiledHeadLogprob.apply(hidden.to(weight.dtype), weight, head.bias, targets, float(temperature),
                                  int(position_tile), int(vocab_tile))


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


def needed_columns(attention_mask: torch.Tensor, scored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts [B], ends [B]): the columns [start_b, end_b) of input_ids that row b must give the
    model so that every scored response position gets its log-prob — from the row's first real
    token to the column before its last scored token (that token is a target, never an input).
    attention_mask [B, P + T]; scored bool [B, T] (the response tokens to score). A row that
    scores nothing needs nothing (end = start = 0)."""
    batch, total = attention_mask.shape
    response_columns = scored.shape[1]
    prompt_columns = total - response_columns
    device = attention_mask.device
    first_real = torch.where(attention_mask.bool(), torch.arange(total, device=device),
                             torch.full_like(attention_mask, total)).amin(dim=1)
    columns = torch.arange(response_columns, device=device)
    last_scored_plus_one = torch.where(scored, columns + 1, torch.zeros_like(columns)).amax(dim=1) \
        if response_columns else torch.zeros(batch, dtype=torch.long, device=device)
    ends = torch.where(last_scored_plus_one > 0, prompt_columns + last_scored_plus_one - 1,
                       torch.zeros_like(last_scored_plus_one))
    return torch.minimum(first_real, ends), ends


def planned_tokens_to_model(attention_mask: torch.Tensor, scored: torch.Tensor, *,
                            max_rows_per_micro_batch: int | None = None,
                            micro_batch_overhead_tokens: int = 128) -> int:
    """The `tokens_to_model` that `response_logprobs` would count for these rows if it scored the
    positions `scored` (bool [B, T]), padding included — from the same `needed_columns` and
    `plan_micro_batches`, with no forward pass. With scored = response_mask it is what full-token
    GRPO gives the model on a batch, the yardstick for a NAT run's `tokens_to_model`."""
    starts, ends = needed_columns(attention_mask.long(), scored.bool())
    plan = plan_micro_batches(starts, ends, max_rows=max_rows_per_micro_batch,
                              overhead_tokens=micro_batch_overhead_tokens)
    return sum(len(micro.rows) * micro.width for micro in plan)


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor, selection: Selection | None = None, *,
                      temperature: float = 1.0, max_rows_per_micro_batch: int | None = None,
                      micro_batch_overhead_tokens: int = 128, head_position_tile: int | None = None,
                      head_vocab_tile: int | None = None,
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
    head_position_tile, head_vocab_tile  the LM head's tile (positions × vocabulary); None = chosen
                    from the model's hidden size and vocabulary by `head_tile_sizes`
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
    # Every method goes through the same length-grouping planner, so that full and URS get the
    # same padding savings and RPC's advantage is only what its cut removes. For full and URS a
    # row needs every column up to its last scored token (for URS that is nearly the whole
    # response: a kept token near the end needs every column before it).
    head = model.get_output_embeddings()
    row_indices, column_indices, values = [], [], []
    for rows, response_column, hidden in scored_hidden_states(
            model.get_decoder(), input_ids, attention_mask, scored, max_rows=max_rows_per_micro_batch,
            overhead_tokens=micro_batch_overhead_tokens, stats=stats):
        targets = input_ids[rows, prompt_columns + response_column]
        values.append(score_positions(head, hidden, targets, temperature=temperature,
                                      position_tile=head_position_tile, vocab_tile=head_vocab_tile))
        row_indices.append(rows)
        column_indices.append(response_column)
        stats.positions_scored += int(targets.numel())

    output = torch.zeros(batch, response_columns, dtype=logprob_dtype(model), device=device)
    if values:
        output = output.index_put((torch.cat(row_indices), torch.cat(column_indices)), torch.cat(values))
    return output
