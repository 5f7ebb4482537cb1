"""Property-based tests (hypothesis) of the NAT core over random masks, lengths (0 included), budgets, dtypes."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import build_tiny_qwen3, make_batch
from minnat.grpo import LOSS_AGGREGATIONS, policy_loss
from minnat.logprobs import response_logprobs
from minnat.nat import CUT_SAMPLINGS, METHODS, RPC_CUT_DISTRIBUTIONS, select_tokens, select_tokens_biased

lengths_strategy = st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=6)
budget_strategy = st.floats(min_value=1e-3, max_value=1.0, allow_nan=False)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mask_from(lengths, extra_columns=0):
    lengths = torch.tensor(lengths)
    return torch.arange(int(lengths.max()) + extra_columns).unsqueeze(0) < lengths.unsqueeze(1)


@FAST
@given(lengths=lengths_strategy, extra=st.integers(0, 3), method=st.sampled_from(METHODS),
       budget=budget_strategy, distribution=st.sampled_from(RPC_CUT_DISTRIBUTIONS), seed=st.integers(0, 2**31))
def test_selection_invariants(lengths, extra, method, budget, distribution, seed):
    if max(lengths) + extra == 0:
        extra = 1
    mask = mask_from(lengths, extra)
    selection = select_tokens(mask, method, budget, torch.Generator().manual_seed(seed),
                              cut_distribution=distribution)
    assert torch.isfinite(selection.weights).all() and (selection.weights >= 0).all()
    assert not (selection.keep & ~mask).any()                          # keep ⊆ mask
    assert (selection.inclusion_prob[mask] > 0).all()                  # every token can be drawn
    assert (selection.inclusion_prob[~mask] == 0).all()
    assert (selection.inclusion_prob <= 1 + 1e-6).all()
    kept_weights = selection.weights[selection.keep]
    assert torch.allclose(kept_weights * selection.inclusion_prob[selection.keep], torch.ones_like(kept_weights),
                          rtol=1e-5)
    assert (selection.weights[~selection.keep] == 0).all()
    if method == "rpc":
        columns = torch.arange(mask.shape[1])
        assert torch.equal(selection.keep, columns.unsqueeze(0) < selection.cut_lengths.unsqueeze(1))
        assert ((selection.cut_lengths >= 1) == (torch.tensor(lengths) > 0)).all()  # non-empty rows keep ≥ 1
    if method == "full" or budget == 1.0:
        assert torch.equal(selection.keep, mask) and torch.equal(selection.weights, mask.float())


@FAST
@given(lengths=lengths_strategy, budget=budget_strategy, distribution=st.sampled_from(RPC_CUT_DISTRIBUTIONS),
       sampling=st.sampled_from(CUT_SAMPLINGS), seed=st.integers(0, 2**31))
def test_stratified_and_independent_cuts_are_valid_rpc_selections(lengths, budget, distribution, sampling, seed):
    mask = mask_from(lengths, 1)
    selection = select_tokens(mask, "rpc", budget, torch.Generator().manual_seed(seed),
                              cut_distribution=distribution, cut_sampling=sampling)
    columns = torch.arange(mask.shape[1])
    assert torch.equal(selection.keep, columns.unsqueeze(0) < selection.cut_lengths.unsqueeze(1))
    assert ((selection.cut_lengths >= 1) == (torch.tensor(lengths) > 0)).all()
    assert (selection.cut_lengths <= torch.tensor(lengths)).all()
    assert torch.isfinite(selection.weights).all() and (selection.inclusion_prob[mask] > 0).all()


@FAST
@given(lengths=lengths_strategy, budget=budget_strategy, seed=st.integers(0, 2**31))
def test_biased_contrasts_keep_a_subset_with_weight_one(lengths, budget, seed):
    mask = mask_from(lengths, 1)
    generator = torch.Generator().manual_seed(seed)
    entropies = torch.rand(mask.shape, generator=generator) * mask
    for selection in (select_tokens_biased(mask, "rpc-unweighted", budget, generator),
                      select_tokens_biased(mask, "top-entropy", budget, entropies=entropies)):
        assert selection.biased and not (selection.keep & ~mask).any()
        assert torch.equal(selection.weights, selection.keep.float())
        loss_mask = selection.loss_mask(mask)
        assert not (selection.weights.bool() & ~loss_mask).any()   # policy_loss accepts the pair
        if mask.any():
            assert selection.keep.any()  # both keep at least one token of a non-empty batch
    top = select_tokens_biased(mask, "top-entropy", budget, entropies=entropies)
    count = int(mask.sum())
    assert int(top.keep.sum()) >= min(count, 1) and int(top.keep.sum()) <= count


@FAST
@given(lengths=lengths_strategy, method=st.sampled_from(METHODS), budget=budget_strategy,
       loss_agg=st.sampled_from(LOSS_AGGREGATIONS), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**31))
def test_policy_loss_is_finite_with_finite_gradients(lengths, method, budget, loss_agg, dtype, seed):
    mask = mask_from(lengths, 1)
    generator = torch.Generator().manual_seed(seed)
    selection = select_tokens(mask, method, budget, generator)
    logprobs = (-3 * torch.rand(mask.shape, generator=generator, dtype=dtype)).requires_grad_()
    old = logprobs.detach() + 0.5 * torch.randn(mask.shape, generator=generator, dtype=dtype)
    ref = logprobs.detach() + 0.5 * torch.randn(mask.shape, generator=generator, dtype=dtype)
    advantages = torch.randn(len(lengths), generator=generator, dtype=dtype)
    loss = policy_loss(logprobs, old, advantages, mask, weights=selection.weights.to(dtype), ref_logprobs=ref,
                       kl_coef=0.1, loss_agg=loss_agg, max_new_tokens=mask.shape[1])
    assert torch.isfinite(loss)
    if loss.requires_grad:
        loss.backward()
        assert torch.isfinite(logprobs.grad).all()
        assert (logprobs.grad[~selection.keep] == 0).all()  # dropped tokens get no gradient


MODEL = {}


def tiny_model(dtype):
    if dtype not in MODEL:
        MODEL[dtype] = build_tiny_qwen3(dtype=dtype, seed=11)
    return MODEL[dtype]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt_lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data(),
       method=st.sampled_from(METHODS), budget=budget_strategy,
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31))
def test_response_logprobs_kept_positions_match_full_path(prompt_lengths, data, method, budget, dtype, seed):
    response_lengths = data.draw(st.lists(st.integers(0, 8), min_size=len(prompt_lengths),
                                          max_size=len(prompt_lengths)))
    model = tiny_model(dtype)
    input_ids, attention_mask, response_mask = make_batch(prompt_lengths, response_lengths, seed=seed % 1000)
    selection = select_tokens(response_mask, method, budget, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = response_logprobs(model, input_ids, attention_mask, response_mask)
        kept = response_logprobs(model, input_ids, attention_mask, response_mask, selection)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-6
    assert torch.isfinite(full).all() and torch.isfinite(kept).all()
    assert (full[response_mask] <= 0).all()
    assert ((kept - full)[selection.keep].abs() <= tolerance).all()
    assert (kept[~selection.keep] == 0).all()
    if method == "full" or budget == 1.0:
        assert torch.allclose(kept, full, atol=tolerance)
