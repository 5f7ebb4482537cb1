"""Log-probs with exact truncation: kept positions equal the full path, RPC really shortens the input."""
import pytest
import torch

from torch.utils._python_dispatch import TorchDispatchMode

import minnat.logprobs
from conftest import build_tiny_qwen3, make_batch
from minnat.logprobs import LogprobStats, head_tile_sizes, plan_micro_batches, response_logprobs, score_positions
from minnat.nat import select_tokens


def unpadded_reference(model, input_ids, attention_mask, response_mask):
    """Each row alone, without any padding, through the plain model forward."""
    prompt_columns = input_ids.shape[1] - response_mask.shape[1]
    output = torch.zeros(response_mask.shape, dtype=torch.float64)
    for row in range(input_ids.shape[0]):
        tokens = input_ids[row][attention_mask[row].bool()].unsqueeze(0)
        prompt_length = int(attention_mask[row, :prompt_columns].sum())
        length = int(response_mask[row].sum())
        if length == 0:
            continue
        with torch.no_grad():
            logits = model(tokens).logits.double()
        logp = torch.log_softmax(logits[0, prompt_length - 1:prompt_length + length - 1], dim=-1)
        output[row, :length] = logp.gather(1, tokens[0, prompt_length:].unsqueeze(1)).squeeze(1)
    return output


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_kept_logprobs_equal_the_full_path(dtype, tolerance):
    model = build_tiny_qwen3(dtype=dtype, seed=3)
    input_ids, attention_mask, response_mask = make_batch([7, 2, 4, 1, 5], [9, 4, 0, 6, 1], seed=4)
    reference = unpadded_reference(model, input_ids, attention_mask, response_mask)
    with torch.no_grad():
        full = response_logprobs(model, input_ids, attention_mask, response_mask)
    assert (full.double() - reference).abs().max() < tolerance
    assert (full[~response_mask] == 0).all()
    for method in ["urs", "rpc"]:
        for seed in range(4):
            selection = select_tokens(response_mask, method, 0.5, torch.Generator().manual_seed(seed))
            with torch.no_grad():
                kept = response_logprobs(model, input_ids, attention_mask, response_mask, selection)
            assert (kept.double() - reference)[selection.keep].abs().max() < tolerance
            assert (kept[~selection.keep] == 0).all()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_temperature_divides_the_logits(dtype, tolerance):
    model = build_tiny_qwen3(seed=5, dtype=dtype)
    input_ids, attention_mask, response_mask = make_batch([3, 5], [4, 2], seed=5)
    with torch.no_grad():
        logits = model(input_ids[:1, 2:8]).logits.double() / 0.7  # row 0: prompt starts at column 2
        expected = torch.log_softmax(logits, -1)[0, 2:6].gather(1, input_ids[0, 5:9].unsqueeze(1)).squeeze(1)
        got = response_logprobs(model, input_ids, attention_mask, response_mask, temperature=0.7)
    assert (got[0, :4].double() - expected).abs().max() < tolerance


def full_logits_reference(head, hidden, targets, temperature):
    """The plain computation the tiles must reproduce: every logit at once, log_softmax in float64."""
    logits = head(hidden).double() / temperature
    return torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("tiles", [(None, None), (7, 50), (1, 1000), (64, 333)])
def test_tiled_head_equals_the_full_logits(dtype, tolerance, tiles):
    """Values and gradients (hidden, weight, bias) of the tiled head = the full-logits computation, τ ≠ 1."""
    torch.manual_seed(0)
    head = torch.nn.Linear(24, 1000, bias=True, dtype=dtype)
    hidden = torch.randn(45, 24, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 1000, (45,))
    targets[:3] = torch.tensor([0, 999, 500])  # first and last vocabulary entries, and a tile border
    incoming = torch.randn(45, dtype=dtype)  # an arbitrary downstream gradient, as the GRPO loss gives
    for temperature in (1.0, 0.7, 1.6):
        got = score_positions(head, hidden, targets, temperature=temperature, position_tile=tiles[0],
                              vocab_tile=tiles[1])
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        (got.to(dtype) * incoming).sum().backward()
        tiled_grads = [hidden.grad, head.weight.grad, head.bias.grad]
        hidden.grad = head.weight.grad = head.bias.grad = None
        expected = full_logits_reference(head, hidden, targets, temperature)
        (expected.to(dtype) * incoming).sum().backward()
        assert (got.double() - expected).abs().max() < tolerance
        for tiled, plain in zip(tiled_grads, [hidden.grad, head.weight.grad, head.bias.grad]):
            assert (tiled.double() - plain.double()).abs().max() < tolerance * (1 + plain.abs().max())
        hidden.grad = head.weight.grad = head.bias.grad = None


def test_tiled_head_in_bfloat16_matches_float32_and_handles_no_positions():
    torch.manual_seed(1)
    head = torch.nn.Linear(32, 700, bias=False)
    hidden = torch.randn(20, 32)
    targets = torch.randint(0, 700, (20,))
    expected = full_logits_reference(head, hidden, targets, 0.8)
    half_head = torch.nn.Linear(32, 700, bias=False, dtype=torch.bfloat16)
    half_head.weight.data.copy_(head.weight.data)
    half_hidden = hidden.bfloat16().requires_grad_()
    got = score_positions(half_head, half_hidden, targets, temperature=0.8, position_tile=8, vocab_tile=128)
    assert got.dtype == torch.float32 and (got.double() - expected).abs().max() < 0.1  # bf16 inputs: ~3 digits
    got.sum().backward()
    assert half_hidden.grad.dtype == torch.bfloat16 and torch.isfinite(half_head.weight.grad.float()).all()
    empty = score_positions(head, torch.zeros(0, 32, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)


class LargestTensor(TorchDispatchMode):
    """The largest tensor any operation creates (forward and backward), by element count, except `allowed` shapes."""

    def __init__(self, allowed_shapes):
        super().__init__()
        self.allowed, self.largest = {tuple(shape) for shape in allowed_shapes}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in (result if isinstance(result, (tuple, list)) else [result]):
            if isinstance(tensor, torch.Tensor) and tuple(tensor.shape) not in self.allowed:
                self.largest = max(self.largest, tensor.numel())
        return result


def test_head_memory_is_bounded_by_one_tile_whatever_the_number_of_positions():
    """No tensor larger than a tile is ever made, however many positions: [K, V] logits never exist."""
    torch.manual_seed(2)
    vocab, width, positions = 5000, 16, 3000
    head = torch.nn.Linear(width, vocab, bias=False)
    hidden = torch.randn(positions, width, requires_grad=True)
    targets = torch.randint(0, vocab, (positions,))
    with LargestTensor(allowed_shapes=[head.weight.shape]) as meter:  # the weight's own gradient is [V, H]
        score_positions(head, hidden, targets, temperature=0.9, position_tile=256, vocab_tile=1024).sum().backward()
    assert meter.largest <= 256 * 1024 < positions * vocab // 50


def test_default_tiles_follow_hidden_size_and_vocabulary():
    assert head_tile_sizes(512, 151_936) == (319, 15_232)    # 19 MB float32 tiles for the benchmark's model
    assert head_tile_sizes(4096, 151_936) == (2553, 15_232)  # Qwen3-8B: larger tiles, still 1/16 of V·H
    assert head_tile_sizes(128, 100) == (4096, 100)          # a tiny vocabulary: one tile across
    for hidden_size, vocab in [(512, 151_936), (4096, 151_936), (1024, 32_000), (64, 257)]:
        position_tile, vocab_tile = head_tile_sizes(hidden_size, vocab)
        assert vocab_tile <= vocab and position_tile * vocab_tile <= max(2 ** 22, vocab * hidden_size // 16) + vocab
    with pytest.raises(ValueError, match="must be positive"):
        head_tile_sizes(0, 10)


def test_response_logprobs_does_not_depend_on_the_head_tiles():
    model = build_tiny_qwen3(seed=10)
    input_ids, attention_mask, response_mask = make_batch([3, 5, 2], [9, 4, 7], seed=10)
    with torch.no_grad():
        default = response_logprobs(model, input_ids, attention_mask, response_mask, temperature=0.9)
        tiny_tiles = response_logprobs(model, input_ids, attention_mask, response_mask, temperature=0.9,
                                       head_position_tile=3, head_vocab_tile=10)
    assert (default - tiny_tiles).abs().max() < 1e-12


class TokenCounter:
    """Counts the tokens the transformer body receives and the positions response_logprobs sends to the LM head."""

    def __init__(self, model, monkeypatch):
        self.body_tokens, self.head_positions = 0, 0
        model.get_decoder().register_forward_pre_hook(self.count_body, with_kwargs=True)
        score = minnat.logprobs.score_positions

        def counted(head, hidden, targets, **options):
            assert head is model.get_output_embeddings()
            self.head_positions += hidden.shape[0]
            return score(head, hidden, targets, **options)

        monkeypatch.setattr(minnat.logprobs, "score_positions", counted)

    def count_body(self, module, args, kwargs):
        self.body_tokens += kwargs["input_ids"].numel()


def test_rpc_really_shortens_what_the_model_sees(monkeypatch):
    model = build_tiny_qwen3(seed=6)
    counter = TokenCounter(model, monkeypatch)
    prompt_lengths = [4] * 16
    response_lengths = [40] * 16
    input_ids, attention_mask, response_mask = make_batch(prompt_lengths, response_lengths, seed=6)
    with torch.no_grad():
        response_logprobs(model, input_ids, attention_mask, response_mask)
    full_tokens = counter.body_tokens
    assert full_tokens == 16 * (4 + 40 - 1)  # the last response token is a target, never an input
    selection = select_tokens(response_mask, "rpc", 0.5, torch.Generator().manual_seed(0))
    needed = int((4 + selection.cut_lengths - 1).sum())  # prompt + prefix, minus the final target
    for overhead in (0, 1024):
        counter.body_tokens = counter.head_positions = 0
        stats = LogprobStats()
        with torch.no_grad():
            response_logprobs(model, input_ids, attention_mask, response_mask, selection, stats=stats,
                              micro_batch_overhead_tokens=overhead)
        assert counter.body_tokens == stats.tokens_to_model
        assert stats.real_tokens_to_model == needed  # what the rows need, padding and rides-along excluded
        assert counter.head_positions == int(selection.keep.sum()) == stats.positions_scored
        if overhead == 0:
            assert counter.body_tokens == needed  # one pass per distinct length: no padding at all
        assert needed <= counter.body_tokens < 0.75 * full_tokens


def test_urs_runs_the_body_fully_but_the_head_only_at_kept_positions(monkeypatch):
    model = build_tiny_qwen3(seed=7)
    counter = TokenCounter(model, monkeypatch)
    input_ids, attention_mask, response_mask = make_batch([3, 5, 2], [10, 7, 9], seed=7)
    selection = select_tokens(response_mask, "urs", 0.3, torch.Generator().manual_seed(1))
    stats = LogprobStats()
    with torch.no_grad():
        response_logprobs(model, input_ids, attention_mask, response_mask, selection, stats=stats)
    assert counter.head_positions == int(selection.keep.sum()) < int(response_mask.sum())
    # every row with a kept token is fed up to the column before its last kept token: no further
    prompt_columns = input_ids.shape[1] - response_mask.shape[1]
    rows = selection.keep.any(dim=1)
    first_real = attention_mask.bool().float().argmax(dim=1)
    needed = int((prompt_columns + selection.cut_lengths - 1 - first_real)[rows].sum())
    # the planner's optimum is never worse than one pass per row: padding ≤ overhead × passes saved
    passes_saved = int(rows.sum()) - stats.micro_batches
    assert needed <= stats.tokens_to_model <= needed + 128 * passes_saved
    assert sum(shape[0] for shape in stats.micro_batch_shapes) == int(rows.sum())
    assert counter.body_tokens == stats.tokens_to_model


def test_gradients_flow_only_through_kept_positions():
    model = build_tiny_qwen3(seed=8)
    input_ids, attention_mask, response_mask = make_batch([3, 4], [6, 5], seed=8)
    selection = select_tokens(response_mask, "rpc", 0.5, torch.Generator().manual_seed(2))
    logprobs = response_logprobs(model, input_ids, attention_mask, response_mask, selection)
    (logprobs * selection.weights.double()).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0


def test_micro_batch_plan_trades_padding_for_passes():
    starts = torch.zeros(6, dtype=torch.long)
    ends = torch.tensor([100, 98, 10, 12, 0, 40])
    plan = plan_micro_batches(starts, ends, overhead_tokens=20)
    rows = sorted(sorted(micro.rows.tolist()) for micro in plan)
    assert rows == [[0, 1], [2, 3], [5]]  # row 4 needs nothing; padding 40 up to 98 costs more than a pass
    cost = sum(len(m.rows) * m.width + 20 for m in plan)
    assert cost == 2 * 100 + 2 * 12 + 40 + 3 * 20  # the optimum, found by the dynamic programme
    assert len(plan_micro_batches(starts, ends, overhead_tokens=10**9)) == 1
    assert [m.width for m in plan_micro_batches(starts, ends, overhead_tokens=0)] == [10, 12, 40, 98, 100]
    assert all(len(m.rows) <= 1 for m in plan_micro_batches(starts, ends, max_rows=1))


def test_bad_shapes_are_clear_errors():
    model = build_tiny_qwen3(seed=9)
    input_ids, attention_mask, response_mask = make_batch([3, 4], [6, 5], seed=9)
    with pytest.raises(ValueError, match="must both be"):
        response_logprobs(model, input_ids, attention_mask[:, 1:], response_mask)
    with pytest.raises(ValueError, match="fewer columns"):
        response_logprobs(model, input_ids[:, :6], attention_mask[:, :6], response_mask)
    other = select_tokens(torch.ones(2, 3, dtype=torch.bool), "urs", 0.5)
    with pytest.raises(ValueError, match="draw the selection from this response_mask"):
        response_logprobs(model, input_ids, attention_mask, response_mask, other)


def test_the_module_path_for_sharded_heads_equals_the_tiled_head(monkeypatch):
    """ZeRO-3 / FSDP2 keep the head's weight sharded outside its forward: score_positions then calls the
    head module in checkpointed chunks. Same values and gradients as the tiled head (float64, τ ≠ 1)."""
    from minnat.logprobs import head_weight_is_sharded, score_positions_through_module
    model = build_tiny_qwen3(seed=3).double()
    head = model.get_output_embeddings()
    hidden = torch.randn(70, head.in_features, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, head.out_features, (70,))
    tiled = score_positions(head, hidden, targets, temperature=0.7)
    tiled_grads = torch.autograd.grad((tiled * torch.linspace(-1, 1, 70)).sum(), [hidden, head.weight])
    calls = []
    head.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    assert not head_weight_is_sharded(head)
    monkeypatch.setattr(head.weight, "ds_id", 0, raising=False)  # what a ZeRO-3 parameter carries
    assert head_weight_is_sharded(head)
    chunked = score_positions(head, hidden, targets, temperature=0.7, position_tile=32)
    chunked_grads = torch.autograd.grad((chunked * torch.linspace(-1, 1, 70)).sum(), [hidden, head.weight])
    torch.testing.assert_close(chunked, tiled, rtol=0, atol=1e-12)
    for a, b in zip(chunked_grads, tiled_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # 3 chunks forward, 3 more in backward: the recomputation calls the module (ZeRO-3 gathers it again)
    assert sorted(calls) == [6, 6, 32, 32, 32, 32]
    with torch.no_grad():
        assert score_positions_through_module(head, hidden, targets).shape == (70,)


def test_packed_micro_batches_need_no_attention_mask_and_refuse_holes():
    """Each row's span moves to column 0 and the decoder runs without a mask (right padding is
    invisible to causal attention): the log-probs equal a per-row forward with no padding at all."""
    model = build_tiny_qwen3(seed=4).double()
    input_ids, attention_mask, response_mask = make_batch([2, 6, 4], [9, 3, 7], seed=4)
    selection = select_tokens(response_mask, "rpc", 0.5, torch.Generator().manual_seed(2))
    with torch.no_grad():
        packed = response_logprobs(model, input_ids, attention_mask, response_mask, selection,
                                   micro_batch_overhead_tokens=10**6)  # one pass, rows of different lengths
        P = input_ids.shape[1] - response_mask.shape[1]
        for row in range(3):
            real = input_ids[row][attention_mask[row].bool()].unsqueeze(0)
            prompt = int(attention_mask[row, :P].sum())
            logits = model(input_ids=real).logits[0].log_softmax(dim=-1)   # this row alone: no padding anywhere
            for t in range(int(selection.cut_lengths[row])):
                expected = logits[prompt + t - 1, real[0, prompt + t]]
                assert abs(float(packed[row, t]) - float(expected)) < 1e-10
    holed = attention_mask.clone()
    holed[1, P + 1] = 0  # a hole inside row 1's response
    with pytest.raises(ValueError, match="zeros between a row's first real token"):
        response_logprobs(model, input_ids, holed, response_mask, selection)
