"""The Gradio explorer, end to end: each view's API through gradio_client, and the page in headless Chromium.

The app (`minnat.explorer`, launched by app.py) runs in a background thread of this process on a
free localhost port, with the embedded tiny Qwen3 on the short-answer arithmetic task, which
keeps this file quick (the trainer's default task has answers of hundreds of tokens). Nothing
here touches the network (gradio analytics are off, the browser is told not to phone home, and
the page is served from 127.0.0.1). Live-training folders must not outlive their runs: the
server fixture fails if any `minnat-app-live-*` folder made during the module is left behind.
"""
import glob
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client  # noqa: E402

import app  # noqa: E402
from minnat.assets import TINY_QWEN3_DIR  # noqa: E402
from minnat.explorer import agreement, weights  # noqa: E402
from minnat.explorer import live as live_view  # noqa: E402  (`live` below starts a run)
from minnat.train import TrainConfig  # noqa: E402

from scripts.screenshots import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402  (one browser set-up)

MODEL = "embedded"
TASK = "arithmetic"
LIVE_FOLDERS = os.path.join(tempfile.gettempdir(), "minnat-app-live-*")


def wait_until(condition, timeout: float, step: float = 0.2) -> bool:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(step)
    return True


@pytest.fixture(scope="module")
def app_server():
    if not (TINY_QWEN3_DIR / "model.safetensors").is_file():
        pytest.fail(f"the embedded model is missing from {TINY_QWEN3_DIR}; build it with "
                    "`python scripts/make_tiny_model.py`.")
    folders_before = set(glob.glob(LIVE_FOLDERS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest and leaves the other core to the test
    port = free_port()
    demo = app.build_app(MODEL, task_name=TASK)
    app.launch(demo, port=port, block=False, quiet=True)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", demo=demo)
    demo.close()
    torch.set_num_threads(threads)
    # Every run has ended (finished or stopped) by now, and each removes its folder as it ends.
    assert wait_until(lambda: not set(glob.glob(LIVE_FOLDERS)) - folders_before, timeout=60), \
        f"live-training folders left behind: {sorted(set(glob.glob(LIVE_FOLDERS)) - folders_before)}"


@pytest.fixture(scope="module")
def server(app_server):
    return app_server.url


@pytest.fixture
def client(server):
    """A fresh client is a fresh browser session: its own gr.State."""
    return Client(server, verbose=False)


def sample(client, prompt=None, group_size=8, budget=0.5, seed=0, methods=("full", "urs", "rpc"),
           cut="uniform-floor", sample_seed=0):
    prompt = prompt if prompt is not None else "4721+985="
    return client.predict(prompt, group_size, sample_seed, list(methods), budget, seed, cut, api_name="/sample")


# ----------------------------------------------------------------------------- tokens


def test_tokens_view_keeps_about_rho_with_weights_one_over_pi(client):
    page, table, numbers, status, = sample(client, budget=0.5)
    assert "error" not in status
    responses = numbers["responses"]
    assert len(responses) == 8 and numbers["budget"] == 0.5
    assert all(r["reward"] in (0.0, 1.0) for r in responses)
    kept = {"urs": 0, "rpc": 0}
    total = 0
    for response in responses:
        length = len(response["tokens"])
        total += length
        assert length > 0
        full = response["methods"]["full"]
        assert full["keep"] == [1] * length and full["weight"] == [1.0] * length
        for method in ("urs", "rpc"):
            drawn = response["methods"][method]
            kept[method] += sum(drawn["keep"])
            for keep, pi, weight in zip(drawn["keep"], drawn["inclusion_prob"], drawn["weight"]):
                assert 0 < pi <= 1
                # The weight shown is the Horvitz–Thompson weight: 1/π on kept tokens, 0 on dropped ones.
                assert weight == pytest.approx(1 / pi if keep else 0.0, rel=1e-4)
        assert set(response["methods"]["urs"]["inclusion_prob"]) == {0.5}
        rpc_keep = response["methods"]["rpc"]["keep"]
        cut = sum(rpc_keep)
        assert 1 <= cut <= length and rpc_keep == [1] * cut + [0] * (length - cut)  # a prefix
        assert response["methods"]["rpc"]["inclusion_prob"][0] == 1.0
    # URS keeps each token with probability 1/2, independently: over ~500 tokens within ±0.12 (5 s.d.).
    assert abs(kept["urs"] / total - 0.5) < 0.12
    assert 0.15 < kept["rpc"] / total < 0.85  # one cut per response: 8 draws, so a loose bound
    # The page shows kept and dropped tokens, with the rewards, and the summary counts the kept tokens.
    assert page.count("tok kept") >= total and "tok dropped" in page and "reward" in page
    assert f"{kept['urs']} of {total}" in table and f"{kept['rpc']} of {total}" in table
    # The HT token count is labelled as what it is, with its expectation, not as "≈" the count.
    assert f"Σ 1/π<sub>t</sub> over kept tokens (expectation: {total})" in table
    assert f"estimate of the number of response tokens, {total}" in table
    assert "≈" not in table and "Σ weights" not in table
    assert "sampling seed 0 (typed)" in page


def test_tokens_view_shows_the_contrasts_as_biased_with_weight_one(client):
    """rpc-unweighted and top-entropy: named "(biased)", every kept token weighs 1, and the page says why."""
    page, table, numbers, status = sample(client, methods=("rpc", "rpc-unweighted", "top-entropy"), budget=0.5,
                                          seed=3)
    assert status == "", status
    kept_entropies, dropped_entropies, top_kept, total = [], [], 0, 0
    for response in numbers["responses"]:
        methods = response["methods"]
        assert not methods["rpc"]["biased"]
        for contrast in ("rpc-unweighted", "top-entropy"):
            drawn = methods[contrast]
            assert drawn["biased"]
            assert drawn["weight"] == [float(keep) for keep in drawn["keep"]]  # weight 1, no 1/π_t
        # rpc-unweighted cuts where RPC cuts (same seed) but drops the HT weights.
        assert methods["rpc-unweighted"]["keep"] == methods["rpc"]["keep"]
        assert max(methods["rpc"]["weight"]) > 1
        top = methods["top-entropy"]
        assert len(top["entropy"]) == len(response["tokens"])
        kept_entropies += [h for h, keep in zip(top["entropy"], top["keep"]) if keep]
        dropped_entropies += [h for h, keep in zip(top["entropy"], top["keep"]) if not keep]
        top_kept += sum(top["keep"])
        total += len(response["tokens"])
    # top-entropy keeps the highest-entropy tokens of the group: about a fraction ρ of them.
    assert min(kept_entropies) >= max(dropped_entropies)
    assert abs(top_kept / total - 0.5) < 0.02
    assert "rpc-unweighted<small>(biased)</small>" in page and "top-entropy<small>(biased)</small>" in page
    assert "the same cuts as the RPC rows" in page and "weight 1, not 1/π" in page
    assert "π<sub>t</sub> = 0: it never enters the gradient" in page and "deterministic given θ" in page
    assert "**rpc-unweighted (biased)**" in table and "**top-entropy (biased)**" in table
    assert table.count("n/a: weight 1, not 1/π<sub>t</sub>") == 2
    # Another selection seed: rpc-unweighted follows RPC's new cut, top-entropy (deterministic) keeps the same.
    _, _, again, _ = client.predict(["rpc", "rpc-unweighted", "top-entropy"], 0.5, 4, "uniform-floor",
                                    api_name="/redraw")
    for first, second in zip(numbers["responses"], again["responses"]):
        assert second["methods"]["top-entropy"]["keep"] == first["methods"]["top-entropy"]["keep"]
        assert second["methods"]["rpc-unweighted"]["keep"] == second["methods"]["rpc"]["keep"]
    assert [r["methods"]["rpc"]["keep"] for r in again["responses"]] != \
        [r["methods"]["rpc"]["keep"] for r in numbers["responses"]]


def test_sample_without_a_seed_draws_fresh_responses_and_shows_the_seed(client):
    _, _, first, _ = sample(client, sample_seed=None, group_size=4)
    _, _, second, _ = sample(client, sample_seed=None, group_size=4)
    assert not first["sampling_seed_fixed"] and not second["sampling_seed_fixed"]
    assert first["sampling_seed"] != second["sampling_seed"]
    # The seed the page reports gives exactly those responses back when typed.
    page, _, again, _ = sample(client, sample_seed=first["sampling_seed"], group_size=4)
    assert again["sampling_seed_fixed"] and f"sampling seed {first['sampling_seed']} (typed)" in page
    assert [r["tokens"] for r in again["responses"]] == [r["tokens"] for r in first["responses"]]


def test_draw_again_redraws_the_selection_without_resampling(client):
    _, _, first, _ = sample(client, budget=0.3, seed=5)
    seed, _, _, second, status = client.predict(["full", "urs", "rpc"], 0.3, 5, "uniform-floor",
                                                api_name="/draw_again")
    assert seed == 6 and second["seed"] == 6 and status == ""
    assert [r["tokens"] for r in second["responses"]] == [r["tokens"] for r in first["responses"]]
    assert [r["methods"]["urs"]["keep"] for r in second["responses"]] != \
        [r["methods"]["urs"]["keep"] for r in first["responses"]]
    # Redrawing with the first seed gives the first selection back: draws are reproducible.
    _, _, again, _ = client.predict(["full", "urs", "rpc"], 0.3, 5, "uniform-floor", api_name="/redraw")
    assert again["responses"] == first["responses"]


def test_typed_prompt_and_bad_input_are_explained(client):
    _, _, numbers, status = sample(client, prompt="12+34", group_size=4, methods=("rpc",))
    assert numbers["prompt"] == "12+34=" and len(numbers["responses"]) == 4 and status == ""
    assert list(numbers["responses"][0]["methods"]) == ["rpc"]
    *_, status = sample(client, prompt="   ")
    assert "prompt is empty" in status and "Traceback" not in status
    *_, status = sample(client, methods=())
    assert "choose at least one method" in status
    status = client.predict("/no/such/model", api_name="/load_model")
    assert "could not load the model" in status and "does not exist" in status


def test_two_sessions_keep_their_own_responses(server):
    first, second = Client(server, verbose=False), Client(server, verbose=False)
    outputs = {}

    def run(name, session, prompt):
        outputs[name] = sample(session, prompt=prompt, group_size=4)[2]

    threads = [threading.Thread(target=run, args=("a", first, "12+34=")),
               threading.Thread(target=run, args=("b", second, "98765+4321="))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outputs["a"]["prompt"] == "12+34=" and outputs["b"]["prompt"] == "98765+4321="
    # Each session's "draw again" redraws over its own responses.
    for session, name in ((first, "a"), (second, "b")):
        redrawn = session.predict(["full"], 0.5, 1, "uniform-floor", api_name="/draw_again")[3]
        assert redrawn["prompt"] == outputs[name]["prompt"]
        assert [r["tokens"] for r in redrawn["responses"]] == [r["tokens"] for r in outputs[name]["responses"]]


# ----------------------------------------------------------------------------- HT weights


def test_views_share_one_default_budget_and_name_the_floor_alpha(app_server, client):
    budgets = [block.value for block in app_server.demo.blocks.values()
               if isinstance(block, gr.Slider) and block.label == "budget ρ"]
    assert len(budgets) == 3 and set(budgets) == {0.5}  # Tokens, HT weights, Live training
    _, summary, _, _ = client.predict(64, 0.5, 100, 0, api_name="/ht_weights")
    assert "α = 0.2ρ = 0.1" in summary and "1/α = 10" in summary and "φ" not in summary


def test_eight_concurrent_clients_on_tokens_and_ht_weights_each_get_their_own_answer(server):
    """8 browser sessions at once: each samples its own prompt and plots its own curves, then redraws."""
    cases = [dict(prompt=f"{11 * (i + 2)}+{7 * (i + 3)}=", size=2 + i % 3, length=20 + 4 * i,
                  budget=round(0.3 + 0.05 * i, 2)) for i in range(8)]
    answers, errors = {}, []

    def session(i, case):
        try:
            client = Client(server, verbose=False)
            _, _, numbers, status = sample(client, prompt=case["prompt"], group_size=case["size"], sample_seed=i)
            _, summary, frame, weights_status = client.predict(case["length"], case["budget"], 500, i,
                                                               api_name="/ht_weights")
            redrawn = client.predict(["full", "urs"], case["budget"], 3, "uniform-floor", api_name="/draw_again")
            answers[i] = (numbers, status, frame, weights_status, redrawn)
        except Exception as error:  # noqa: BLE001 — reported with its session below
            errors.append((i, repr(error)))

    threads = [threading.Thread(target=session, args=(i, case)) for i, case in enumerate(cases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(answers) == 8, errors
    for i, case in enumerate(cases):
        numbers, status, frame, weights_status, redrawn = answers[i]
        assert status == "" and weights_status == ""
        assert numbers["prompt"] == case["prompt"] and len(numbers["responses"]) == case["size"]
        assert numbers["sampling_seed"] == i
        headers, rows = frame["headers"], frame["data"]
        assert len(rows) == case["length"]
        pi = [row[headers.index("URS π")] for row in rows]
        assert set(pi) == {case["budget"]}
        seed, _, _, numbers_again, _ = redrawn
        assert seed == 4 and numbers_again["prompt"] == case["prompt"]
        assert [r["tokens"] for r in numbers_again["responses"]] == [r["tokens"] for r in numbers["responses"]]


def test_ht_weights_view_shows_one_over_pi_and_mean_weights_at_one(client):
    plot, summary, frame, status = client.predict(48, 0.3, 3000, 0, api_name="/ht_weights")
    assert status == "" and plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png")
    headers, rows = frame["headers"], frame["data"]
    assert len(rows) == 48 and [row[0] for row in rows] == list(range(1, 49))
    for scheme in ("URS", "RPC uniform-floor", "RPC power"):
        pi = [row[headers.index(f"{scheme} π")] for row in rows]
        weight = [row[headers.index(f"{scheme} 1/π")] for row in rows]
        mean = [row[headers.index(f"{scheme} mean weight")] for row in rows]
        assert all(w == pytest.approx(1 / p, rel=1e-5) for p, w in zip(pi, weight))
        # Where π_t ≥ 0.2 the mean of 3000 draws has s.e. ≤ √(4/3000) ≈ 0.037: 5 s.e. is 0.18.
        assert all(abs(m - 1) < 0.19 for p, m in zip(pi, mean) if p >= 0.2)
        assert sum(pi) == pytest.approx(0.3 * 48, abs=1.0)
    assert "RPC (uniform-floor)" in summary and "RPC (power)" in summary
    *_, status = client.predict(48, 0.3, 0, 0, api_name="/ht_weights")
    assert "number of draws N must be a whole number" in status


# ----------------------------------------------------------------------------- gradient agreement


def test_gradient_agreement_view_error_falls_with_k(client):
    plot, table, numbers, status = client.predict(4, 8, ["urs", "rpc"], "0.5", 24, "uniform-floor", 0,
                                                  api_name="/gradient_agreement")
    assert status == "", status
    assert plot["plot"].startswith("data:image/png")
    assert numbers["batch"]["mixed_groups"] >= 1 and numbers["batch"]["full_gradient_norm"] > 0
    results = {r["method"]: r for r in numbers["results"]}
    assert set(results) == {"urs", "rpc"}
    for result in results.values():
        errors, variance = result["relative_error"], result["per_draw_variance"]
        assert result["draws"] == list(range(1, 25)) and all(math.isfinite(e) for e in errors)
        assert variance > 0
        # Single draws scatter widely (a lucky first draw can land close), so compare with their RMS √V,
        # the expected error of one draw: the 24-draw average is clearly closer to g_full than that.
        # (√(V/24) ≈ 0.2·√V in expectation; the bound is loose because on this model the noise lies in
        # few directions, so one realisation of the average can sit well above or below √(V/K).)
        late = [e * e for e in errors[12:]]
        assert math.sqrt(sum(late) / len(late)) < 0.7 * math.sqrt(variance)
        assert errors[-1] < 0.7 * math.sqrt(variance)
        assert errors[-1] < 4 * math.sqrt(variance / 24)
        assert result["cosine"][-1] > 0.9
        assert abs(result["kept_fraction"] - 0.5) < 0.15
        # The 1/√K law is checked as a law about the RMS: 24 draws make 12 disjoint pairs, and the RMS
        # error of the pair averages is close to √(V/2) (12 pairs: a loose factor-of-2.5 band).
        assert list(result["block_rms_error"]) == ["2"]
        ratio = result["block_rms_error"]["2"] / result["predicted_rms_error"]["2"]
        assert 0.4 < ratio < 2.5, ratio
        assert 0 <= result["variance_share_along_full"] <= 1
    assert "URS ρ=0.5" in table and "RPC ρ=0.5" in table
    # 1 − cos in scientific notation (the cosine itself would print 1.0000 in every row), and no claim
    # that one sequence "follows" the law.
    assert len(re.findall(r"\| \d\.\d\de-\d\d \|", table)) == 2
    assert "follow" not in table and "Measured ÷ predicted lies between" in table


def test_gradient_agreement_contrasts_flatten_at_a_significant_bias_and_nat_has_none(client):
    """NAT's bias is not significantly different from 0; rpc-unweighted's is, and its error stays at it."""
    plot, table, numbers, status = client.predict(4, 8, ["urs", "rpc", "rpc-unweighted", "top-entropy"], "0.5", 32,
                                                  "uniform-floor", 1, api_name="/gradient_agreement")
    assert status == "", status
    results = {r["method"]: r for r in numbers["results"]}
    for method in ("urs", "rpc"):
        assert not results[method]["biased"] and not results[method]["bias_significant"]
        assert results[method]["bias_z"] < agreement.SIGNIFICANT_Z
    unweighted = results["rpc-unweighted"]
    assert unweighted["biased"] and unweighted["bias_significant"] and not unweighted["bias_exact"]
    assert unweighted["bias_z"] >= agreement.SIGNIFICANT_Z and unweighted["bias"] > 0.1
    # The error of the average flattens at the bias instead of falling like 1/√K, and stays above NAT's.
    errors = unweighted["relative_error"]
    assert abs(errors[-1] - unweighted["bias"]) < 0.2 * unweighted["bias"]
    assert all(e > 0.5 * unweighted["bias"] for e in errors[8:])
    assert max(results["urs"]["relative_error"][-1], results["rpc"]["relative_error"][-1]) < unweighted["bias"]
    # top-entropy is deterministic: every draw is the same, the bias is exact (no z) and non-zero.
    top = results["top-entropy"]
    assert top["bias_exact"] and top["bias_z"] is None and top["bias"] > agreement.ROUNDING_BIAS
    assert max(top["relative_error"]) == pytest.approx(min(top["relative_error"]), rel=1e-6)
    assert top["bias"] == pytest.approx(top["relative_error"][0], rel=1e-6)
    # The words are the numbers' verdicts, and the contrasts are named as biased.
    assert "NAT's bias is not significantly different from 0 (URS ρ=0.5, RPC ρ=0.5" in table
    assert "rpc-unweighted ρ=0.5 (biased): the bias is significantly non-zero" in table
    assert "top-entropy ρ=0.5 (biased): deterministic given θ" in table and "exact" in table
    # Where the bias comes from: each method's exact expected weight by position, relative to full's.
    profiles = numbers["expected_weight_by_position"]
    for label in ("URS ρ=0.5", "RPC ρ=0.5"):
        assert all(weight == pytest.approx(1.0, abs=1e-6) for weight in profiles[label]["weight"])
    unweighted_profile = [w for w in profiles["rpc-unweighted ρ=0.5 (biased)"]["weight"] if w is not None]
    assert unweighted_profile[0] > 1.5 and unweighted_profile[-1] < 0.3  # early tokens over-, late under-counted
    top_profile = [w for w in profiles["top-entropy ρ=0.5 (biased)"]["weight"] if w is not None]
    assert all(0.0 <= w <= 1.0 for w in top_profile) and min(top_profile) < 1.0


def gradient_result(method, bias_squared, standard_error, variance=0.2):
    from minnat.diagnostics import GradientAgreement

    bias = math.sqrt(max(bias_squared, 0))
    return GradientAgreement(method=method, budget=0.5, cut_distribution=None, num_draws=16, cosine=[0.99] * 16,
                             relative_error=[max(bias, 0.1)] * 16, draw_relative_errors=[0.4] * 16,
                             per_draw_variance=variance, kept_fraction=0.5, full_gradient_norm=1.0,
                             bias_squared=bias_squared, bias_squared_standard_error=standard_error, bias=bias,
                             bias_standard_error=standard_error)


@pytest.mark.parametrize("result, verdict", [
    (("urs", -0.001, 0.002), "NAT's bias is not significantly different from 0 (URS ρ=0.5: z = -0.5)"),
    (("rpc", 0.01, 0.002), "RPC ρ=0.5's estimate sits z = 5.0 standard errors above 0 at N = 16. NAT is unbiased "
                           "by construction"),
    (("rpc-unweighted", 0.25, 0.02), "rpc-unweighted ρ=0.5 (biased): the bias is significantly non-zero, "
                                     "b = 0.500 ± 0.020 (z = 12.5)"),
    (("rpc-unweighted", 0.01, 0.02), "rpc-unweighted ρ=0.5 (biased): the bias is not significantly different "
                                     "from 0 at N = 16 (z = 0.5), although the method is biased by construction"),
    (("top-entropy", 1e-4, 0.0), "top-entropy ρ=0.5 (biased): deterministic given θ, so every draw is the same"),
    (("top-entropy", 1e-16, 0.0), "zero up to float rounding"),
])
def test_gradient_agreement_bias_words_are_chosen_from_the_numbers(result, verdict):
    sentence = agreement.bias_sentence([gradient_result(*result)])
    assert verdict in sentence, sentence
    assert ("not significantly" in sentence) == ("not significantly" in verdict)


@pytest.mark.parametrize("rewards, expected", [
    ([[1, 0], [0, 1], [1, 1], [0, 0]], "2 of 4 groups mix right and wrong answers; in the other 2 groups every "
                                       "response gets the same reward, so Â = 0 there and they add nothing"),
    ([[1, 0], [0, 0], [1, 1], [0, 0]], "1 of 4 groups mixes right and wrong answers; in the other 3 groups"),
    ([[1, 0], [1, 1]], "1 of 2 groups mixes right and wrong answers; in the other 1 group every response gets "
                       "the same reward, so Â = 0 there and it adds nothing"),
    ([[1, 0], [0, 1]], "all 2 groups mix right and wrong answers."),
    ([[1, 0]], "its group mixes right and wrong answers."),
])
def test_gradient_agreement_batch_sentence_is_true_in_every_case(rewards, expected):
    batch = SimpleNamespace(rewards=torch.tensor(rewards, dtype=torch.float).flatten(),
                            response_mask=torch.ones(len(rewards) * 2, 3, dtype=torch.bool))
    note, mixed = agreement.batch_description(batch, len(rewards), 2)
    assert expected in note and mixed == sum(1 for group in rewards if len(set(group)) > 1)
    assert "the others have" not in note


def test_gradient_agreement_bad_input_and_stop(client):
    *_, status = client.predict(4, 8, ["urs"], "0.5, 1.5", 8, "uniform-floor", 0, api_name="/gradient_agreement")
    assert "budget ρ must be in (0, 1]" in status and "1.5" in status
    *_, status = client.predict(4, 8, ["urs"], "0.5", 5000, "uniform-floor", 0, api_name="/gradient_agreement")
    assert "number of draws N must be a whole number between 1 and 256" in status
    *_, status = client.predict(4, 8, [], "0.5", 8, "uniform-floor", 0, api_name="/gradient_agreement")
    assert "choose at least one NAT method" in status

    job = client.submit(4, 8, ["urs", "rpc"], "0.1, 0.2, 0.3", 256, "uniform-floor", 1,
                        api_name="/gradient_agreement")
    deadline = time.time() + 60
    while "Computing" not in str(job.outputs()[-1:]) and not job.done() and time.time() < deadline:
        time.sleep(0.2)
    started = time.time()
    client.predict(api_name="/stop_gradient_agreement")
    outputs = job.result(timeout=60)
    assert time.time() - started < 30
    assert "Stopped" in outputs[3]
    if isinstance(outputs[2], dict) and "results" in outputs[2]:  # curves finished before the stop
        assert outputs[2]["results"][-1]["draws"][-1] < 256


# ----------------------------------------------------------------------------- live training


def live(client, methods=("full", "urs", "rpc"), steps=2, budget=0.5, batch=8, group=4, num_eval=4, every=1,
         task=TASK):
    return client.submit(task, list(methods), budget, steps, 3e-4, batch, group, num_eval, every, 0,
                         api_name="/live_training")


def test_live_training_runs_all_three_methods_with_finite_metrics(client):
    outputs = live(client).result(timeout=240)
    plot, table, numbers, status = outputs
    assert "Done" in status and plot["plot"].startswith("data:image/png")
    summary, records = numbers["summary"], numbers["records"]
    assert set(summary) == {"full", "urs", "rpc"}
    for method, result in summary.items():
        assert result["status"] == "finished" and result["steps"] == 2
        steps = [r for r in records[method] if r["step"] > 0]
        assert [r["step"] for r in steps] == [1, 2]
        for record in steps:
            for key in ("reward_mean", "update_seconds", "loss", "grad_norm", "activation_bytes"):
                assert math.isfinite(record[key]), (method, key, record[key])
            assert record["response_tokens_used"] <= record["response_tokens_generated"]
        assert 0 <= result["accuracy_last"] <= 1 and records[method][0]["step"] == 0
    # Full trains on every token; the NAT runs on fewer, and RPC also holds less activation memory.
    assert summary["full"]["tokens_used"] == summary["full"]["tokens_generated"]
    for method in ("urs", "rpc"):
        assert summary[method]["tokens_used"] < summary[method]["tokens_generated"]
    assert summary["rpc"]["activation_mib"] < summary["full"]["activation_mib"]
    assert "vs full" in table and "full" in table
    # The runs' folder went with the runs.
    assert numbers["folder"].startswith(tempfile.gettempdir()) and not os.path.exists(numbers["folder"])


def test_live_training_runs_the_contrasts_on_the_late_credit_task(client):
    """From the arithmetic page, the Live view trains on late-credit with its own embedded model, the
    biased contrasts next to RPC; a task outside its list is refused with a sentence."""
    outputs = live(client, methods=("rpc", "rpc-unweighted", "top-entropy"), steps=1, batch=4, group=2, num_eval=2,
                   every=0, task="late-credit").result(timeout=300)
    plot, table, numbers, status = outputs
    assert "Done" in status, status
    summary, records = numbers["summary"], numbers["records"]
    assert set(summary) == {"rpc", "rpc-unweighted", "top-entropy"}
    assert all(result["status"] == "finished" and result["steps"] == 1 for result in summary.values())
    step = {method: records[method][-1] for method in summary}
    assert all(record["response_length_mean"] > 150 for record in step.values())  # late-credit's long answers
    assert "rpc-unweighted (biased)" in table and "top-entropy (biased)" in table
    shared = SimpleNamespace(task_name="arithmetic", task=None)
    with pytest.raises(ValueError, match="choose a task among long-addition, late-credit, arithmetic"):
        live_view.live_task(shared, "gsm8k")


def test_live_training_stops_when_asked_and_rejects_bad_settings(client):
    *_, status = live(client, batch=10, group=4).result(timeout=30)
    assert "must be a multiple of the group size" in status
    *_, status = live(client, methods=()).result(timeout=30)
    assert "choose at least one method" in status

    job = live(client, steps=50)
    deadline = time.time() + 120
    while "step 1/50" not in str(job.outputs()[-1:]) and not job.done() and time.time() < deadline:
        time.sleep(0.2)
    client.predict(api_name="/stop_live_training")
    plot, table, numbers, status = job.result(timeout=120)
    assert "Done" in status
    assert all(result["status"] == "stopped" for result in numbers["summary"].values())
    assert all(result["steps"] < 50 for result in numbers["summary"].values())
    assert not os.path.exists(numbers["folder"])


def test_live_training_folders_go_when_the_app_exits_mid_run(tmp_path):
    """A run still training when the process exits: the atexit hook stops it and removes its folder."""
    script = tmp_path / "exit_mid_run.py"
    script.write_text(
        "import sys, time, torch\n"
        "torch.set_num_threads(1)\n"
        "from minnat.explorer.library import ModelLibrary, Shared\n"
        "from minnat.explorer.live import run_live\n"
        "from minnat.tasks import get_task\n"
        "library = ModelLibrary(task='arithmetic')\n"
        "shared = Shared(library, library.get('embedded'), get_task('arithmetic'), 'arithmetic', None, None)\n"
        "updates = run_live(shared, None, 'arithmetic', ['rpc'], 0.5, 100, 3e-4, 4, 2, 1, 0, 0, None, 'session')\n"
        "for *_, run in updates:\n"
        "    if run is not None and run.records['rpc']:\n"
        "        print(run.folder, flush=True)\n"
        "        sys.exit(0)  # leaves the generator and the training thread mid-run\n")
    result = subprocess.run([sys.executable, str(script)], cwd=Path(app.__file__).parent, capture_output=True,
                            text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    folder = result.stdout.strip().splitlines()[-1]
    assert "minnat-app-live-" in folder and not os.path.exists(folder)


def test_plots_keep_legends_off_the_data_and_steps_whole():
    run = SimpleNamespace(records={
        "full": [{"step": 0, "eval_accuracy": 0.2}] + [
            {"step": s, "reward_mean": 0.1 * s, "update_seconds": 0.1, "response_tokens_used": 100,
             "response_tokens_generated": 100, "activation_bytes": 2**20, "eval_accuracy": None} for s in (1, 2, 3)],
        "rpc": [{"step": 0, "eval_accuracy": 0.2}] + [
            {"step": s, "reward_mean": 0.1 * s, "update_seconds": 0.05, "response_tokens_used": 50,
             "response_tokens_generated": 100, "activation_bytes": 2**19, "eval_accuracy": None} for s in (1, 2, 3)]})
    figure = live_view.live_figure(run)
    figure.canvas.draw()
    for axis in figure.axes:
        assert axis.get_legend() is None  # one legend, under the panels
        ticks = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    assert len(figure.legends) == 1
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert {"full", "RPC", "greedy held-out accuracy (dashed)"} <= set(labels)
    figure, _, _ = weights.ht_weights_view(32, 0.5, 50, 0)
    assert all(axis.get_legend() is None for axis in figure.axes) and len(figure.legends) == 1


# ----------------------------------------------------------------------------- the page in Chromium


def test_page_in_headless_chromium_shows_highlighted_tokens(server, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: `apt-get install chromium` (the end-to-end test "
                    "drives the real page).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(server)
            page.get_by_role("tab", name="Tokens").click()
            page.locator("#nat-tokens .nat-card").first.wait_for(timeout=60_000)  # the sample the page opens with
            prompt = page.get_by_label("prompt", exact=True)
            prompt.fill("583+29=")
            prompt.press("Enter")
            page.get_by_role("button", name="Sample responses").click()
            page.locator("#nat-tokens .nat-prompt").filter(has_text="583+29=").wait_for(timeout=60_000)
            kept = page.locator("#nat-tokens .tok.kept")
            assert kept.count() > 20
            assert page.locator("#nat-tokens .tok.dropped").count() > 5
            assert page.locator("#nat-tokens .nat-card").count() == 8
            assert "reward" in page.locator("#nat-tokens").inner_text()
            shot = tmp_path / "tokens.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000

            # Each view answers in the page.
            page.get_by_role("tab", name="HT weights").click()
            page.locator("#nat-weights-table").filter(has_text="uniform-floor").wait_for(timeout=60_000)
            assert "α = 0.2ρ" in page.locator("#nat-weights-table").inner_text()
            page.get_by_role("tab", name="Gradient agreement").click()
            draws = page.get_by_label("draws N (largest K)")
            draws.fill("4")
            draws.press("Enter")
            page.get_by_role("button", name="Compute").click()
            page.locator("#nat-agreement-table").filter(has_text="RPC ρ=0.5").wait_for(timeout=120_000)
            # The default methods include the contrast, named as biased, with its bias in the table.
            page.locator("#nat-agreement-table").filter(has_text="rpc-unweighted ρ=0.5 (biased)").wait_for(
                timeout=120_000)
            assert "bias b" in page.locator("#nat-agreement-table").inner_text()

            # Closing the tab mid-run stops its live training and removes the run's folder.
            page.get_by_role("tab", name="Live training").click()
            steps = page.get_by_label("steps", exact=True)
            steps.fill("100")
            steps.press("Enter")
            page.get_by_role("button", name="Start").click()
            folder_text = page.locator("#nat-live-table code").first
            folder_text.wait_for(timeout=120_000)
            folder = folder_text.inner_text().strip()
            assert "minnat-app-live-" in folder and os.path.isdir(folder)
            page.close()
            assert wait_until(lambda: not os.path.exists(folder), timeout=90), f"{folder} outlived its tab"
        finally:
            browser.close()


def test_command_line_refuses_an_unloadable_model_with_a_sentence():
    result = subprocess.run([sys.executable, "app.py", "--model", "/no/such/folder", "--port", str(free_port())],
                            cwd=Path(app.__file__).parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error: the model folder '/no/such/folder' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_app_serves_the_trainers_default_task_and_lists_the_librarys_tasks():
    from minnat.tasks import TASKS

    assert app.parse_args([]).task == TrainConfig().task
    for name in TASKS:
        assert app.parse_args(["--task", name]).task == name
