"""Selection and Horvitz–Thompson weights: exact unbiasedness, Monte Carlo behaviour, bad input."""
import itertools
import math

import pytest
import torch

from conftest import make_batch
from minnat.grpo import policy_loss
from minnat.logprobs import response_logprobs
from minnat.nat import (METHODS, RPC_CUT_DISTRIBUTIONS, rpc_cut_probabilities, rpc_inclusion_probabilities,
                        select_for_method, select_tokens, select_tokens_biased, selection_from_keep,
                        stratified_cut_law)


def loss_and_grad(model, batch, old_logprobs, ref_logprobs, advantages, selection, loss_agg):
    input_ids, attention_mask, response_mask = batch
    model.zero_grad()
    logprobs = response_logprobs(model, input_ids, attention_mask, response_mask, selection)
    loss = policy_loss(logprobs, old_logprobs, advantages, response_mask,
                       weights=None if selection is None else selection.weights.double(),
                       ref_logprobs=ref_logprobs, clip_eps=0.1, clip_eps_high=0.15, kl_coef=0.3,
                       loss_agg=loss_agg, max_new_tokens=response_mask.shape[1])
    if loss.requires_grad:  # a draw that keeps no token has a constant (zero) loss
        loss.backward()
    gradient = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                          for p in model.parameters()])
    return loss.detach(), gradient


def perturbed_logprobs(model, batch, seed):
    """log π_old and log π_ref that differ from log π_θ enough to switch clipping and KL on."""
    input_ids, attention_mask, response_mask = batch
    with torch.no_grad():
        current = response_logprobs(model, input_ids, attention_mask, response_mask).double()
    generator = torch.Generator().manual_seed(seed)
    old = current + 0.3 * torch.randn(current.shape, generator=generator, dtype=torch.float64)
    ref = current + 0.3 * torch.randn(current.shape, generator=generator, dtype=torch.float64)
    return old * response_mask, ref * response_mask


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("cut_distribution,budget", [("uniform-floor", 0.3), ("uniform-floor", 0.7),
                                                     ("power", 0.5), ("power", 0.35)])
def test_rpc_enumerating_every_cut_gives_full_loss_and_gradient(tiny_model, loss_agg, cut_distribution, budget):
    lengths = [5, 3, 0]
    batch = make_batch(prompt_lengths=[4, 2, 3], response_lengths=lengths, response_columns=6)
    response_mask = batch[2]
    old, ref = perturbed_logprobs(tiny_model, batch, seed=1)
    advantages = torch.tensor([1.2, -0.7, 0.4], dtype=torch.float64)
    full_loss, full_grad = loss_and_grad(tiny_model, batch, old, ref, advantages, None, loss_agg)

    lengths_t = torch.tensor(lengths)
    pi = rpc_inclusion_probabilities(lengths_t, 6, budget, cut_distribution, dtype=torch.float64)
    cut_choices = [list(zip(range(1, L + 1), rpc_cut_probabilities(L, budget, cut_distribution).tolist()))
                   if L else [(0, 1.0)] for L in lengths]
    expected_loss, expected_grad, total_probability = 0.0, torch.zeros_like(full_grad), 0.0
    for combo in itertools.product(*cut_choices):
        cuts = torch.tensor([cut for cut, _ in combo])
        probability = math.prod(p for _, p in combo)
        keep = torch.arange(6).unsqueeze(0) < cuts.unsqueeze(1)
        selection = selection_from_keep(keep, pi, "rpc", budget, cut_distribution)
        loss, grad = loss_and_grad(tiny_model, batch, old, ref, advantages, selection, loss_agg)
        expected_loss += probability * loss
        expected_grad += probability * grad
        total_probability += probability
    assert total_probability == pytest.approx(1.0, abs=1e-12)
    assert float(expected_loss) == pytest.approx(float(full_loss), rel=1e-6, abs=1e-12)
    # Qwen3's RMSNorm computes in float32 even for a float64 model, so agreement is at float32 rounding.
    assert (expected_grad - full_grad).abs().max() <= 1e-6 * full_grad.abs().max()
    assert full_grad.abs().sum() > 0  # the check is not vacuous


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("budget", [0.25, 0.6])
def test_urs_enumerating_every_mask_gives_full_loss_and_gradient(tiny_model, loss_agg, budget):
    lengths = [3, 2]
    batch = make_batch(prompt_lengths=[2, 4], response_lengths=lengths)
    response_mask = batch[2]
    old, ref = perturbed_logprobs(tiny_model, batch, seed=2)
    advantages = torch.tensor([-1.1, 0.9], dtype=torch.float64)
    full_loss, full_grad = loss_and_grad(tiny_model, batch, old, ref, advantages, None, loss_agg)
    positions = response_mask.nonzero().tolist()
    pi = response_mask.double() * budget
    expected_loss, expected_grad = 0.0, torch.zeros_like(full_grad)
    for bits in itertools.product([0, 1], repeat=len(positions)):
        keep = torch.zeros_like(response_mask)
        for (row, column), bit in zip(positions, bits):
            keep[row, column] = bool(bit)
        probability = budget ** sum(bits) * (1 - budget) ** (len(bits) - sum(bits))
        selection = selection_from_keep(keep, pi, "urs", budget)
        loss, grad = loss_and_grad(tiny_model, batch, old, ref, advantages, selection, loss_agg)
        expected_loss += probability * loss
        expected_grad += probability * grad
    assert float(expected_loss) == pytest.approx(float(full_loss), rel=1e-6, abs=1e-12)
    # Qwen3's RMSNorm computes in float32 even for a float64 model, so agreement is at float32 rounding.
    assert (expected_grad - full_grad).abs().max() <= 1e-6 * full_grad.abs().max()


@pytest.mark.parametrize("method,cut_distribution", [("urs", "uniform-floor"), ("rpc", "uniform-floor"),
                                                     ("rpc", "power")])
@pytest.mark.parametrize("budget", [0.2, 0.5, 0.85])
def test_monte_carlo_weights_average_to_one_and_kept_fraction_to_budget(method, cut_distribution, budget):
    lengths = torch.tensor([1, 4, 9, 17, 30, 0])
    draws = 20000
    mask = torch.arange(30).unsqueeze(0) < lengths.repeat(draws).unsqueeze(1)
    selection = select_tokens(mask, method, budget, torch.Generator().manual_seed(7),
                              cut_distribution=cut_distribution)
    weights = selection.weights.view(draws, len(lengths), 30).double()
    pi = selection.inclusion_prob.view(draws, len(lengths), 30)[0].double()
    response = pi > 0
    # Per position: mean of keep/π over N draws has standard deviation sqrt((1 − π)/(π N)).
    mean_weight = weights.mean(dim=0)
    std = torch.sqrt((1 - pi) / pi.clamp(min=1e-300) / draws)
    tight = response & (pi > 0.01)  # very rare positions (power family) are checked through the bound only
    assert ((mean_weight - 1).abs()[tight] <= 5 * std[tight] + 1e-9).all()
    assert (mean_weight[~response] == 0).all()
    # Kept tokens per row: mean → Σ_t π_t, which itself lies in [ρL, ρL + 1].
    kept = selection.keep.view(draws, len(lengths), 30).double().sum(dim=2)
    expected_kept = pi.sum(dim=1)
    if method == "urs":
        assert torch.allclose(expected_kept, budget * lengths.double())
    else:
        assert (expected_kept >= budget * lengths - 1e-6).all()
        assert (expected_kept <= budget * lengths + 1 + 1e-6).all()
    kept_std = kept.std(dim=0) / math.sqrt(draws)
    assert ((kept.mean(dim=0) - expected_kept).abs() <= 5 * kept_std + 1e-9).all()
    total_fraction = kept.sum() / (draws * lengths.sum())
    assert abs(float(total_fraction) - budget) <= 1.0 * len(lengths) / lengths.sum() + 0.01


def test_rpc_keeps_a_prefix_and_pi_is_positive_on_every_token():
    lengths = torch.tensor([1, 2, 50, 0, 7])
    mask = torch.arange(50).unsqueeze(0) < lengths.unsqueeze(1)
    for distribution in RPC_CUT_DISTRIBUTIONS:
        for budget in [0.05, 0.3, 0.5, 0.99, 1.0]:
            selection = select_tokens(mask, "rpc", budget, torch.Generator().manual_seed(3),
                                      cut_distribution=distribution)
            assert (selection.inclusion_prob[mask] > 0).all()
            assert (selection.inclusion_prob[~mask] == 0).all()
            assert torch.equal(selection.keep, torch.arange(50).unsqueeze(0) < selection.cut_lengths.unsqueeze(1))
            assert (selection.cut_lengths[lengths > 0] >= 1).all()
            assert torch.allclose(rpc_cut_probabilities(7, budget, distribution).sum().double(),
                                  torch.tensor(1.0, dtype=torch.float64))


def test_uniform_floor_bounds_the_largest_weight():
    mask = torch.ones(1, 400, dtype=torch.bool)
    for budget in [0.1, 0.25, 0.5]:
        pi = select_tokens(mask, "rpc", budget).inclusion_prob
        assert float((1 / pi).max()) <= 1 / (0.2 * budget) + 1e-3


def test_full_keeps_everything_with_weight_one():
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([6, 2, 0]).unsqueeze(1)
    for method in METHODS:
        selection = select_tokens(mask, method, 1.0)
        assert torch.equal(selection.keep, mask)
        assert torch.equal(selection.weights, mask.float())


@pytest.mark.parametrize("budget", [0.0, -0.5, 1.5, float("nan"), "half"])
def test_bad_budget_is_a_clear_error(budget):
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"budget ρ must be"):
        select_tokens(mask, "urs", budget)


def test_bad_method_mask_and_distribution_are_clear_errors():
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"unknown NAT method 'top-k'; choose one of"):
        select_tokens(mask, "top-k", 0.5)
    with pytest.raises(ValueError, match="right-padded"):
        select_tokens(torch.tensor([[True, False, True]]), "rpc", 0.5)
    with pytest.raises(ValueError, match="2-D tensor"):
        select_tokens(torch.ones(3, dtype=torch.bool), "rpc", 0.5)
    with pytest.raises(ValueError, match="cut distribution"):
        select_tokens(mask, "rpc", 0.5, cut_distribution="gaussian")


def test_generator_makes_draws_reproducible():
    mask = torch.ones(4, 20, dtype=torch.bool)
    for method in ["urs", "rpc"]:
        first = select_tokens(mask, method, 0.5, torch.Generator().manual_seed(5))
        second = select_tokens(mask, method, 0.5, torch.Generator().manual_seed(5))
        assert torch.equal(first.keep, second.keep)


# ----------------------------------------------------------------------------- stratified cuts across the batch

@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("cut_distribution,budget", [("uniform-floor", 0.3), ("power", 0.5)])
def test_stratified_cuts_enumerated_exactly_give_full_loss_and_gradient(tiny_model, loss_agg, cut_distribution,
                                                                        budget):
    """The stratified design's exact joint law (every row order × every offset interval) is unbiased."""
    lengths = [5, 3, 0, 4]
    batch = make_batch(prompt_lengths=[4, 2, 3, 2], response_lengths=lengths, response_columns=6)
    old, ref = perturbed_logprobs(tiny_model, batch, seed=3)
    advantages = torch.tensor([1.2, -0.7, 0.4, -1.0], dtype=torch.float64)
    full_loss, full_grad = loss_and_grad(tiny_model, batch, old, ref, advantages, None, loss_agg)
    pi = rpc_inclusion_probabilities(torch.tensor(lengths), 6, budget, cut_distribution, dtype=torch.float64)
    law = stratified_cut_law(torch.tensor(lengths), budget, cut_distribution)
    assert sum(p for _, p in law) == pytest.approx(1.0, abs=1e-12)
    expected_loss, expected_grad = 0.0, torch.zeros_like(full_grad)
    for cuts, probability in law:
        keep = torch.arange(6).unsqueeze(0) < cuts.unsqueeze(1)
        loss, grad = loss_and_grad(tiny_model, batch, old, ref, advantages,
                                   selection_from_keep(keep, pi, "rpc", budget, cut_distribution), loss_agg)
        expected_loss += probability * loss
        expected_grad += probability * grad
    assert float(expected_loss) == pytest.approx(float(full_loss), rel=1e-6, abs=1e-12)
    assert (expected_grad - full_grad).abs().max() <= 1e-6 * full_grad.abs().max()


@pytest.mark.parametrize("cut_distribution,budget", [("uniform-floor", 0.25), ("uniform-floor", 0.5),
                                                     ("uniform-floor", 0.8), ("power", 0.5)])
def test_stratified_cut_of_each_row_has_exactly_rpcs_law(cut_distribution, budget):
    lengths = torch.tensor([6, 1, 3, 0, 5])
    law = stratified_cut_law(lengths, budget, cut_distribution)
    for row, length in enumerate(lengths.tolist()):
        marginal = torch.zeros(max(length, 1), dtype=torch.float64)
        for cuts, probability in law:
            marginal[max(int(cuts[row]) - 1, 0)] += probability
        expected = rpc_cut_probabilities(length, budget, cut_distribution) if length else torch.ones(1)
        assert torch.allclose(marginal, expected.double(), atol=1e-12), (row, marginal, expected)
    # ...while the joint law is not the independent one (the cuts are balanced across rows).
    assert len(law) < math.prod(max(int(length), 1) for length in lengths)


def test_stratified_monte_carlo_marginals_match_pi_and_the_kept_total_barely_moves():
    """B = 64 ragged rows, ρ = 0.5: per-row keep frequencies match π_t; the kept total's CV is ≥ 5× smaller."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 61, (64,), generator=generator)
    mask = torch.arange(60).unsqueeze(0) < lengths.unsqueeze(1)
    draws = 3000
    totals, keep_counts = {}, {}
    for sampling in ("independent", "stratified"):
        draw_generator = torch.Generator().manual_seed(1)
        selections = [select_tokens(mask, "rpc", 0.5, draw_generator, cut_sampling=sampling) for _ in range(draws)]
        totals[sampling] = torch.tensor([float(s.keep.sum()) for s in selections])
        keep_counts[sampling] = torch.stack([s.keep for s in selections]).double().mean(dim=0)
        assert all(s.cut_sampling == sampling for s in selections[:3])
    pi = rpc_inclusion_probabilities(lengths, 60, 0.5).double()
    standard_error = torch.sqrt(pi * (1 - pi) / draws)
    inside = mask & (pi < 1)
    assert ((keep_counts["stratified"] - pi).abs()[inside] <= 5 * standard_error[inside] + 1e-9).all()
    assert torch.equal(keep_counts["stratified"][~mask], torch.zeros_like(pi[~mask]))
    coefficient = {name: float(total.std() / total.mean()) for name, total in totals.items()}
    assert coefficient["independent"] >= 5 * coefficient["stratified"], coefficient
    # Both keep ρ of the tokens on average (within one token per row of ceil rounding).
    for total in totals.values():
        assert 0.5 * lengths.sum() <= total.mean() <= 0.5 * lengths.sum() + 64


def test_stratified_selection_is_a_proper_rpc_selection():
    mask = torch.arange(30).unsqueeze(0) < torch.tensor([30, 1, 0, 17]).unsqueeze(1)
    selection = select_tokens(mask, "rpc", 0.4, torch.Generator().manual_seed(2), cut_sampling="stratified")
    assert torch.equal(selection.keep, torch.arange(30).unsqueeze(0) < selection.cut_lengths.unsqueeze(1))
    assert selection.cut_lengths.tolist()[1:3] == [1, 0]
    assert torch.equal(selection.inclusion_prob, rpc_inclusion_probabilities(mask.sum(1), 30, 0.4))
    urs = select_tokens(mask, "urs", 0.4, cut_sampling="stratified")  # URS has no cuts: the option is ignored
    assert urs.cut_sampling is None
    with pytest.raises(ValueError, match="unknown cut_sampling 'latin'"):
        select_tokens(mask, "rpc", 0.4, cut_sampling="latin")


# ----------------------------------------------------------------------------- the biased contrasts

def test_rpc_unweighted_is_rpcs_cut_with_weight_one_normalised_over_kept_tokens():
    mask = torch.arange(12).unsqueeze(0) < torch.tensor([12, 5, 0]).unsqueeze(1)
    rpc = select_tokens(mask, "rpc", 0.5, torch.Generator().manual_seed(4))
    unweighted = select_tokens_biased(mask, "rpc-unweighted", 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(unweighted.keep, rpc.keep)                        # the same cut law, draw for draw
    assert torch.equal(unweighted.weights, unweighted.keep.float())      # ...but no 1/π_t
    assert torch.equal(unweighted.loss_mask(mask), unweighted.keep)      # ...and |o_i| → C_i
    assert torch.equal(rpc.loss_mask(mask), mask) and not rpc.biased and unweighted.biased
    assert unweighted.method == "rpc-unweighted" and unweighted.kept_fraction == rpc.kept_fraction


def test_rpc_unweighted_loss_is_biased_by_exact_enumeration(tiny_model):
    """E over every cut of the truncated-answer loss differs from the full loss (and NAT's equals it)."""
    lengths = [5, 3]
    batch = make_batch(prompt_lengths=[4, 2], response_lengths=lengths, response_columns=5)
    response_mask = batch[2]
    old, ref = perturbed_logprobs(tiny_model, batch, seed=1)
    advantages = torch.tensor([1.2, -0.7], dtype=torch.float64)
    full_loss, _ = loss_and_grad(tiny_model, batch, old, ref, advantages, None, "seq-mean-token-mean")
    pi = rpc_inclusion_probabilities(torch.tensor(lengths), 5, 0.5, dtype=torch.float64)
    expected = 0.0
    for c0, p0 in zip(range(1, 6), rpc_cut_probabilities(5, 0.5).tolist()):
        for c1, p1 in zip(range(1, 4), rpc_cut_probabilities(3, 0.5).tolist()):
            keep = torch.arange(5).unsqueeze(0) < torch.tensor([c0, c1]).unsqueeze(1)
            with torch.no_grad():
                logprobs = response_logprobs(tiny_model, *batch, selection_from_keep(keep, pi, "rpc", 0.5))
            expected += p0 * p1 * float(policy_loss(logprobs, old, advantages, keep, weights=keep.double(),
                                                    ref_logprobs=ref, clip_eps=0.1, clip_eps_high=0.15,
                                                    kl_coef=0.3, loss_agg="seq-mean-token-mean"))
    assert abs(expected - float(full_loss)) > 1e-3 * abs(float(full_loss)) + 1e-4


def trl_high_entropy_mask(entropies, mask, threshold):
    """TRL 1.16's GRPOTrainer.get_high_entropy_mask on one process (gather = identity)."""
    from types import SimpleNamespace

    from trl.trainer.grpo_trainer import GRPOTrainer
    single_process = SimpleNamespace(pad_across_processes=lambda tensor, dim, pad_index: tensor,
                                     gather=lambda tensor: tensor)
    return GRPOTrainer.get_high_entropy_mask(SimpleNamespace(accelerator=single_process), entropies, mask, threshold)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.05, 1.0])
def test_top_entropy_keeps_what_trl_keeps(fraction):
    generator = torch.Generator().manual_seed(5)
    mask = torch.arange(40).unsqueeze(0) < torch.tensor([40, 7, 0, 23, 31]).unsqueeze(1)
    entropies = torch.rand(mask.shape, generator=generator) * 3 * mask  # padding holds 0, as TRL's does
    entropies[0, :4] = entropies[0, 5]  # ties at the threshold are kept, as TRL's >= does
    selection = select_tokens_biased(mask, "top-entropy", fraction, entropies=entropies)
    assert torch.equal(selection.keep, trl_high_entropy_mask(entropies, mask, 1 - fraction))
    assert torch.equal(selection.weights, selection.keep.float()) and selection.biased
    assert torch.equal(selection.loss_mask(mask), mask)  # TRL keeps the full-response normaliser
    assert selection.kept_fraction == pytest.approx(fraction, abs=2 / int(mask.sum()) + 1e-9)
    kept, dropped = entropies[selection.keep], entropies[mask & ~selection.keep]
    assert dropped.numel() == 0 or kept.min() >= dropped.max()


def test_response_entropies_match_the_full_softmax(tiny_model):
    from minnat.entropy import response_entropies
    input_ids, attention_mask, response_mask = make_batch(prompt_lengths=[3, 5, 2], response_lengths=[6, 0, 4])
    entropies = response_entropies(tiny_model, input_ids, attention_mask, response_mask, temperature=0.7,
                                   chunk_size=3)
    with torch.no_grad():
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        logits = tiny_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    prompt = input_ids.shape[1] - response_mask.shape[1]
    log_p = torch.log_softmax(logits[:, prompt - 1:-1].double() / 0.7, dim=-1)
    expected = -(log_p.exp() * log_p).sum(-1) * response_mask
    assert torch.allclose(entropies, expected.to(entropies.dtype), atol=1e-6)
    assert (entropies[response_mask] > 0).all() and (entropies[~response_mask] == 0).all()


def test_contrasts_are_refused_by_select_tokens_and_top_entropy_needs_entropies():
    mask = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="biased contrast, not a NAT method: draw it with .*select_tokens_biased"):
        select_tokens(mask, "rpc-unweighted", 0.5)
    with pytest.raises(ValueError, match="top-entropy needs entropies"):
        select_tokens_biased(mask, "top-entropy", 0.2)
    with pytest.raises(ValueError, match="unknown NAT method 'urs'"):
        select_tokens_biased(mask, "urs", 0.2)
    assert select_for_method(mask, "rpc-unweighted", 0.5).biased
    assert not select_for_method(mask, "rpc", 0.5).biased


# ----------------------------------------------------------------------------- the power family's tail

@pytest.mark.parametrize("budget,length", [(0.1, 200), (0.05, 1000), (0.5, 64)])
def test_power_tail_weights_have_expectation_one_at_every_position_exactly(budget, length):
    """Exact over the float64 uniform's 2⁵³ values: no weight assumes a π_t the sampler cannot draw.

    torch.rand(float64) returns q = j/2⁵³; the power sampler keeps C = #{t : q < π_t} tokens, so
    P(C ≥ t) = #{j : j < π_t·2⁵³}/2⁵³ = ⌈π_t·2⁵³⌉/2⁵³, computed here in exact rational arithmetic
    and multiplied by the float32 weight 1/π_t that the loss uses.
    """
    from fractions import Fraction

    grid = 2 ** 53
    uniforms = torch.rand(10000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * grid
    assert torch.equal(uniforms, uniforms.floor())  # the uniform really lives on the 2⁻⁵³ grid
    mask = torch.ones(4, length, dtype=torch.bool)
    selection = select_tokens(mask, "rpc", budget, torch.Generator().manual_seed(0), cut_distribution="power")
    levels = torch.rand(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pi = rpc_inclusion_probabilities(torch.tensor([length]), length, budget, "power", dtype=torch.float64)[0]
    assert torch.equal(selection.cut_lengths, (levels.unsqueeze(1) < pi).sum(dim=1))  # the sampler is C = #{q < π}
    assert (pi[1:] <= pi[:-1]).all()  # non-increasing, so C ≥ t ⟺ q < π_t
    weights = (1.0 / selection.inclusion_prob[0]).tolist()  # float32, as selection_from_keep computes them
    expectations = [Fraction(math.ceil(Fraction(p) * grid), grid) * Fraction(w) for p, w in zip(pi.tolist(), weights)]
    worst = max(abs(float(e - 1)) for e in expectations)
    assert worst <= 2 ** -22, worst  # float32 rounding of π_t and 1/π_t, nothing more
    # What the floor prevents: the raw tail (1 − (t−1)/L)^k, drawable at best with probability 2⁻⁵³.
    k = (1 - budget) / budget
    raw_last = (1 - (length - 1) / length) ** k
    assert (budget == 0.5) == (raw_last * grid >= 1)  # ρ = 1/2 never needed the floor at these lengths
    if raw_last * grid < 1:
        assert Fraction(1, grid) / Fraction(raw_last) > 1e3  # the old law: E[w_L] ≫ 1 (5.7·10⁴ at ρ = 0.1, L = 200)
