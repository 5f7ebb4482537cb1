"""Log-probs with exact truncation: kept positions equal the full path, RPC really shortens the input."""
import pytest
import torch

from conftest import build_tiny_qwen3, make_batch
from minnat.logprobs import LogprobStats, plan_micro_batches, response_logprobs
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


def test_temperature_divides_the_logits():
    model = build_tiny_qwen3(seed=5)
    input_ids, attention_mask, response_mask = make_batch([3, 5], [4, 2], seed=5)
    with torch.no_grad():
        logits = model(input_ids[:1, 2:8]).logits.double() / 0.7  # row 0: prompt starts at column 2
        expected = torch.log_softmax(logits, -1)[0, 2:6].gather(1, input_ids[0, 5:9].unsqueeze(1)).squeeze(1)
        got = response_logprobs(model, input_ids, attention_mask, response_mask, temperature=0.7)
    assert torch.allclose(got[0, :4], expected, atol=1e-6)


class TokenCounter:
    """Counts the tokens the transformer body and the LM head actually receive."""

    def __init__(self, model):
        self.body_tokens, self.head_positions = 0, 0
        model.get_decoder().register_forward_pre_hook(self.count_body, with_kwargs=True)
        model.get_output_embeddings().register_forward_pre_hook(self.count_head)

    def count_body(self, module, args, kwargs):
        self.body_tokens += kwargs["input_ids"].numel()

    def count_head(self, module, args):
        self.head_positions += args[0].shape[0]


def test_rpc_really_shortens_what_the_model_sees():
    model = build_tiny_qwen3(seed=6)
    counter = TokenCounter(model)
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


def test_urs_runs_the_body_fully_but_the_head_only_at_kept_positions():
    model = build_tiny_qwen3(seed=7)
    counter = TokenCounter(model)
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
    cost = sum(len(m.rows) * (m.end - m.start) + 20 for m in plan)
    assert cost == 2 * 100 + 2 * 12 + 40 + 3 * 20  # the optimum, found by the dynamic programme
    assert len(plan_micro_batches(starts, ends, overhead_tokens=10**9)) == 1
    assert [m.end - m.start for m in plan_micro_batches(starts, ends, overhead_tokens=0)] == [10, 12, 40, 98, 100]
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
