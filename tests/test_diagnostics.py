"""Diagnostics: NAT gradients average to the full gradient at the 1/√K rate; HT weights average to 1."""
import math

import pytest
import torch

from conftest import make_batch
from minnat.diagnostics import (GradientAgreement, SelectionBias, exact_bias, expected_token_weights,
                                gradient_agreement, ht_weight_curves, log_log_slope, policy_gradient,
                                selection_bias, selection_outcomes)
from minnat.grpo import policy_loss
from minnat.nat import RPC_CUT_DISTRIBUTIONS

NUM_DRAWS = 48


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one thread is fastest, and it does not fight other jobs for the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def batch():
    """Eight responses of different lengths with mixed-sign advantages (as after group standardisation)."""
    input_ids, attention_mask, response_mask = make_batch(prompt_lengths=[5, 3, 4, 6, 2, 4, 3, 5],
                                                          response_lengths=[20, 15, 30, 8, 25, 12, 18, 22])
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.2, -0.3, 0.7, -1.6], dtype=torch.float64)
    return input_ids, attention_mask, response_mask, advantages


def test_full_method_agrees_exactly(tiny_model, batch):
    result = gradient_agreement(tiny_model, *batch, method="full", budget=1.0, num_draws=3)
    assert isinstance(result, GradientAgreement)
    assert result.draws == [1, 2, 3]
    assert max(result.relative_error) < 1e-12
    assert result.per_draw_variance < 1e-20
    assert min(result.cosine) == pytest.approx(1.0, abs=1e-12)
    assert result.kept_fraction == 1.0
    assert result.full_gradient_norm > 0


@pytest.mark.parametrize("method,budget", [("urs", 0.5), ("rpc", 0.5)])
def test_nat_average_approaches_full_gradient_like_one_over_root_k(tiny_model, batch, method, budget):
    result = gradient_agreement(tiny_model, *batch, method=method, budget=budget, num_draws=NUM_DRAWS, seed=1)
    errors = result.relative_error
    assert len(errors) == NUM_DRAWS and all(math.isfinite(e) for e in errors)
    # A single draw is far from g_full; the average of N draws is much closer...
    assert errors[-1] < errors[0] / 3
    assert result.cosine[-1] > 0.95 > result.cosine[0] - 0.05
    # ...at the rate of unbiased averaging, E‖ḡ_K − g‖² = V/K: slope −1/2 on log-log axes,
    slope = log_log_slope(result.draws, errors)
    assert -0.8 < slope < -0.3, slope
    # and the error at K = N is close to √(V/N), with V estimated from the single draws.
    predicted = result.predicted_relative_error(NUM_DRAWS)
    assert 0.4 * predicted < errors[-1] < 2.0 * predicted
    assert result.kept_fraction == pytest.approx(budget, abs=0.06)
    assert result.per_draw_variance > 0.1  # fewer tokens cost variance


def test_smaller_budget_costs_more_variance(tiny_model, batch):
    full = policy_gradient(tiny_model, *batch)
    variances = [gradient_agreement(tiny_model, *batch, method="urs", budget=budget, num_draws=24, seed=2,
                                    full_gradient=full).per_draw_variance for budget in (0.25, 0.5, 0.9)]
    assert variances[0] > variances[1] > variances[2] > 0
    # URS keeps tokens independently, so V ∝ (1 − ρ)/ρ roughly: ρ = 0.25 vs 0.9 is a factor ~27.
    assert variances[0] / variances[2] > 5


def test_model_gradients_are_left_untouched(tiny_model, batch):
    for parameter in tiny_model.parameters():
        parameter.grad = None
    gradient_agreement(tiny_model, *batch, method="rpc", budget=0.5, num_draws=2)
    assert all(parameter.grad is None for parameter in tiny_model.parameters())


def test_stop_early_and_progress_callback(tiny_model, batch):
    seen = []
    result = gradient_agreement(tiny_model, *batch, method="urs", budget=0.5, num_draws=10,
                                on_draw=lambda k, g: seen.append(k), should_stop=lambda: len(seen) >= 3)
    assert seen == [1, 2, 3]
    assert result.num_draws == 3 and len(result.relative_error) == 3


def test_zero_gradient_and_bad_input_are_clear_errors(tiny_model, batch):
    input_ids, attention_mask, response_mask, advantages = batch
    with pytest.raises(ValueError, match="gradient of this batch is zero"):
        gradient_agreement(tiny_model, input_ids, attention_mask, response_mask, torch.zeros_like(advantages))
    with pytest.raises(ValueError, match=r"budget ρ must be in \(0, 1\]"):
        gradient_agreement(tiny_model, *batch, method="urs", budget=1.5)
    with pytest.raises(ValueError, match="num_draws must be a whole number"):
        gradient_agreement(tiny_model, *batch, method="urs", budget=0.5, num_draws=0)
    with pytest.raises(ValueError, match="unknown NAT method"):
        gradient_agreement(tiny_model, *batch, method="topk", budget=0.5)


@pytest.mark.parametrize("method,cut_distribution,budget", [("urs", "uniform-floor", 0.3)] + [
    ("rpc", distribution, budget) for distribution in RPC_CUT_DISTRIBUTIONS for budget in (0.25, 0.5, 0.8)])
def test_mean_weight_sits_at_one(method, cut_distribution, budget):
    draws, length = 4000, 40
    curves = ht_weight_curves(length, budget, method, cut_distribution, num_draws=draws, seed=3)
    assert curves.positions.tolist() == list(range(1, length + 1))
    assert torch.equal(curves.weight, 1.0 / curves.inclusion_prob)
    assert curves.inclusion_prob[0] == pytest.approx(1.0 if method == "rpc" else budget)
    # Each position's mean weight is an average of N draws of keep/π with variance (1 − π)/π, so it
    # lies within a few standard errors √((1 − π)/(πN)) of 1 (5σ over 40 positions: failure odds ~1e-5).
    deviation = (curves.mean_weight - 1.0).abs()
    assert bool((deviation <= 5 * curves.standard_error + 1e-12).all()), deviation.max()
    # Positions kept often are pinned down tightly: the bound derived from N is not vacuous.
    well_sampled = curves.inclusion_prob > 0.2
    assert bool((deviation[well_sampled] < 5 * math.sqrt(4 / draws)).all())
    # Budget: URS keeps ρL on average, RPC within one token of it.
    assert curves.expected_kept_tokens == pytest.approx(budget * length, abs=1.0 + 1e-9)
    assert curves.kept_fraction == pytest.approx(curves.expected_kept_tokens / length, abs=0.02)
    if method == "rpc":
        assert bool((curves.inclusion_prob[1:] <= curves.inclusion_prob[:-1] + 1e-12).all())


def test_full_weights_are_exactly_one_and_bad_input_is_explained():
    curves = ht_weight_curves(10, 1.0, "full", num_draws=5)
    assert torch.equal(curves.mean_weight, torch.ones(10, dtype=torch.float64))
    assert torch.equal(curves.standard_error, torch.zeros(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="length must be a whole number"):
        ht_weight_curves(0, 0.5)
    with pytest.raises(ValueError, match="budget ρ must be in"):
        ht_weight_curves(10, 0.0)
    with pytest.raises(ValueError, match="num_draws must be a whole number"):
        ht_weight_curves(10, 0.5, num_draws=-3)


# ----------------------------------------------------------------------------- bias: NAT has none, the contrasts do

@pytest.fixture(scope="module")
def tiny_batch():
    """Three short responses: every selection outcome can be enumerated."""
    input_ids, attention_mask, response_mask = make_batch(prompt_lengths=[3, 2, 4], response_lengths=[5, 3, 4],
                                                          seed=1)
    return input_ids, attention_mask, response_mask, torch.tensor([1.0, -0.8, 0.5], dtype=torch.float64)


@pytest.mark.parametrize("method,cut_sampling", [("rpc", "independent"), ("rpc", "stratified"), ("full", None)])
def test_exact_bias_of_nat_is_zero(tiny_model, tiny_batch, method, cut_sampling):
    result = exact_bias(tiny_model, *tiny_batch, method=method, budget=0.5, cut_sampling=cut_sampling or "independent")
    assert isinstance(result, SelectionBias) and result.exact and result.standard_error == 0.0
    # Qwen3's RMSNorm runs in float32 even in a float64 model: zero up to float32 rounding.
    assert result.relative_bias < 1e-5, result
    # RPC under seq-mean-token-mean is a sum of per-row terms: Σ_i |o_i| = 12 one-row passes suffice.
    assert result.num_outcomes == (1 if method == "full" else 12)


def test_exact_bias_of_urs_is_zero(tiny_model):
    input_ids, attention_mask, response_mask = make_batch(prompt_lengths=[3, 2], response_lengths=[4, 3], seed=2)
    result = exact_bias(tiny_model, input_ids, attention_mask, response_mask, torch.tensor([1.0, -0.5]),
                        method="urs", budget=0.3, loss_agg="token-mean")
    assert result.num_outcomes == 2 ** 7 and result.relative_bias < 1e-5


@pytest.mark.parametrize("method,cut_sampling", [("rpc-unweighted", "independent"),
                                                 ("rpc-unweighted", "stratified"), ("top-entropy", "independent")])
def test_exact_bias_of_the_contrasts_is_large(tiny_model, tiny_batch, method, cut_sampling):
    result = exact_bias(tiny_model, *tiny_batch, method=method, budget=0.5, cut_sampling=cut_sampling)
    assert result.relative_bias > 0.1, result
    assert result.z == math.inf and "(biased)" in result.label


def test_exact_bias_refuses_too_many_outcomes(tiny_model, batch):
    with pytest.raises(ValueError, match="exceed max_outcomes"):  # token-mean couples rpc-unweighted's rows
        exact_bias(tiny_model, *batch, method="rpc-unweighted", budget=0.5, loss_agg="token-mean")


@pytest.mark.parametrize("method", ["rpc", "urs", "rpc-unweighted", "top-entropy"])
def test_monte_carlo_bias_is_significant_for_the_contrasts_only(tiny_model, batch, method):
    """On a real-size batch: the contrasts' squared bias is many standard errors above 0, NAT's is not."""
    full = policy_gradient(tiny_model, *batch)
    result = gradient_agreement(tiny_model, *batch, method=method, budget=0.5, num_draws=40, seed=1,
                                full_gradient=full)
    if method in ("rpc", "urs"):
        assert result.bias_z < 3, (result.bias, result.bias_standard_error, result.bias_z)
        assert result.bias < 0.2  # a single draw's error is ~1: the bias is a small fraction of it
        return
    assert result.biased and result.bias_z > 5, (result.bias, result.bias_standard_error, result.bias_z)
    assert result.bias > 0.3
    # The average of K draws stops improving at the bias: its error flattens instead of falling like 1/√K.
    errors = result.relative_error
    assert errors[-1] > 0.8 * result.bias and errors[-1] > errors[0] / 3
    assert result.predicted_relative_error(10 ** 6) == pytest.approx(result.bias, rel=0.05)
    if method == "top-entropy":  # deterministic given θ: every draw is the same gradient
        assert max(errors) - min(errors) < 1e-12 and result.bias_standard_error == 0.0


def test_selection_bias_reports_monte_carlo_with_a_standard_error(tiny_model, batch):
    full = policy_gradient(tiny_model, *batch)
    result = selection_bias(tiny_model, *batch, method="rpc-unweighted", budget=0.5, num_draws=20, seed=3,
                            full_gradient=full, cut_sampling="stratified")
    assert not result.exact and result.num_outcomes == 20 and result.cut_sampling == "stratified"
    assert 0 < result.standard_error < result.relative_bias
    assert result.label == "rpc-unweighted ρ=0.5, stratified (biased)"


def test_stratified_rpc_is_unbiased_and_its_variance_is_measured(tiny_model, batch):
    full = policy_gradient(tiny_model, *batch)
    results = {sampling: gradient_agreement(tiny_model, *batch, method="rpc", budget=0.5, num_draws=40, seed=4,
                                            cut_sampling=sampling, full_gradient=full)
               for sampling in ("independent", "stratified")}
    for result in results.values():
        assert result.bias_z < 3 and 0.1 < result.per_draw_variance < 10
    # Eight rows only (one row is ~1/8 of the total): the kept fraction's spread still shrinks clearly.
    kept_spread = {name: torch.tensor(r.draw_kept_fractions).std() for name, r in results.items()}
    assert kept_spread["stratified"] < 0.7 * kept_spread["independent"]


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_row_by_row_enumeration_equals_the_joint_one(tiny_model, tiny_batch, loss_agg):
    """Σ_i |o_i| one-row passes give the same E[g] as all Π_i |o_i| cut combinations (rpc-unweighted)."""
    from minnat.diagnostics import expected_gradient_by_rows, selection_outcomes
    input_ids, attention_mask, response_mask, advantages = tiny_batch
    by_rows, probability, passes = expected_gradient_by_rows(tiny_model, *tiny_batch, "rpc-unweighted", 0.5,
                                                             "uniform-floor", loss_agg=loss_agg)
    joint = torch.zeros_like(by_rows)
    for selection, p in selection_outcomes(response_mask, "rpc-unweighted", 0.5):
        joint += p * policy_gradient(tiny_model, *tiny_batch, selection, loss_agg=loss_agg)
    assert passes == 12 and probability == pytest.approx(1.0)
    # Qwen3's RMSNorm runs in float32 even in a float64 model: agreement at float32 rounding.
    assert (by_rows - joint).abs().max() <= 1e-6 * joint.abs().max(), (by_rows - joint).abs().max()
    coupled = exact_bias(tiny_model, *tiny_batch, method="rpc-unweighted", loss_agg="token-mean")
    assert coupled.num_outcomes == 60 and coupled.relative_bias > 0.1  # Σ C_i couples the rows: joint law


def enumerated_token_weights(response_mask, method, budget, loss_agg, cut_distribution, entropies=None):
    """E[∂L/∂ℓ_{i,t}] / ∂L_full/∂ℓ_{i,t} by enumerating every selection outcome through policy_loss itself."""
    def coefficients(selection):
        logprobs = torch.zeros(response_mask.shape, dtype=torch.float64, requires_grad=True)
        weights = None if selection is None else selection.weights.to(torch.float64)
        loss_mask = response_mask if selection is None else selection.loss_mask(response_mask)
        loss = policy_loss(logprobs, logprobs.detach(), -torch.ones(response_mask.shape[0], dtype=torch.float64),
                           loss_mask, weights=weights, loss_agg=loss_agg, max_new_tokens=response_mask.shape[1])
        return torch.autograd.grad(loss, logprobs)[0]  # with Â = −1 and ratio 1, ∂loss/∂logprob = c_{i,t}

    expected = sum(probability * coefficients(selection) for selection, probability in
                   selection_outcomes(response_mask, method, budget, entropies=entropies,
                                      cut_distribution=cut_distribution))
    full = coefficients(None)
    return torch.where(response_mask, expected / torch.where(response_mask, full, torch.ones_like(full)),
                       torch.zeros_like(full))


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("method,cut_distribution", [("rpc-unweighted", "uniform-floor"), ("rpc-unweighted", "power"),
                                                     ("rpc", "uniform-floor"), ("urs", "uniform-floor"),
                                                     ("top-entropy", "uniform-floor"), ("full", "uniform-floor")])
def test_expected_token_weights_equal_exact_enumeration(method, cut_distribution, loss_agg):
    response_mask = torch.arange(7).unsqueeze(0) < torch.tensor([[7], [4], [2]])
    if method == "urs":  # 2^13 masks is too many; two short rows suffice
        response_mask = response_mask[1:]
    entropies = torch.rand(response_mask.shape, generator=torch.Generator().manual_seed(0))
    budget = 0.4
    exact = enumerated_token_weights(response_mask, method, budget, loss_agg, cut_distribution, entropies)
    computed = expected_token_weights(response_mask, method, budget, cut_distribution=cut_distribution,
                                      entropies=entropies, loss_agg=loss_agg)
    torch.testing.assert_close(computed, exact, rtol=1e-6, atol=1e-9)  # NAT's π_t are float32
    if method == "rpc-unweighted":  # the contrast's weight falls along the response; the first token's is > 1
        row = computed[0]
        assert bool((row[1:] <= row[:-1] + 1e-12).all()) and row[-1] < 0.5
        assert (row[0] > 1.0) == (loss_agg == "seq-mean-token-mean")


def test_expected_token_weights_refuse_token_mean():
    with pytest.raises(ValueError, match="token-mean"):
        expected_token_weights(torch.ones(2, 3, dtype=torch.bool), "rpc-unweighted", 0.5, loss_agg="token-mean")
