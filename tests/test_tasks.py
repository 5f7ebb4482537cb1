"""Tests for minnat/tasks.py and the embedded tiny model in minnat/assets/."""

import json
import random
import re
import string
import sys
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minnat.assets import TINY_QWEN3_DIR
from minnat.tasks import (Example, addition_solution, get_task, long_addition_solution, place_tagged,
                          write_gsm8k_fixture)


@pytest.fixture(scope="module")
def arithmetic():
    return get_task("arithmetic")


# -----------------------------------------------------------------------------
# arithmetic: splits, solutions, reward


def test_arithmetic_splits_are_deterministic_disjoint_and_sized(arithmetic):
    again = get_task("arithmetic")
    assert arithmetic.train_examples == again.train_examples
    assert arithmetic.eval_examples == again.eval_examples
    assert (len(arithmetic.train_examples), len(arithmetic.eval_examples)) == (20000, 200)

    def unordered(examples):
        return {frozenset(example.question.split("+")) for example in examples}

    assert not unordered(arithmetic.train_examples) & unordered(arithmetic.eval_examples)
    assert len({e.question for e in arithmetic.train_examples}) == 20000  # no repeats either

    other_seed = get_task("arithmetic", seed=1, num_train=50, num_eval=10)
    assert other_seed.eval_examples != arithmetic.eval_examples[:10]


def test_arithmetic_eval_split_does_not_depend_on_train_size(arithmetic):
    small = get_task("arithmetic", num_train=10)
    assert small.eval_examples == arithmetic.eval_examples
    assert small.train_examples == arithmetic.train_examples[:10]


def test_every_arithmetic_solution_is_right_and_earns_full_reward(arithmetic):
    for example in arithmetic.train_examples + arithmetic.eval_examples:
        left, right = map(int, example.question.split("+"))
        assert 2 <= len(str(left)) <= 6 and 2 <= len(str(right)) <= 6
        assert example.answer == str(left + right)
        assert example.solution.endswith(f";answer {left + right}")
        assert 30 <= len(example.solution) <= 90
        assert arithmetic.reward(example.solution, example) == 1.0
    assert arithmetic.prompt_text(Example("4721+985", "5706")) == "4721+985="


def test_long_addition_format_and_forgotten_carries():
    assert addition_solution(4721, 985) == "1+5+0=6 c0;2+8+0=10 c1;7+9+1=17 c1;4+0+1=5 c0;answer 5706"
    assert addition_solution(99, 1) == "9+1+0=10 c1;9+0+1=10 c1;answer 100"
    forgets = iter([True, False])
    assert addition_solution(58, 67, forget_carry=lambda: next(forgets)) == "8+7+0=15 c0;5+6+0=11 c1;answer 115"
    assert addition_solution(58, 67, forget_carry=lambda: True) == "8+7+0=15 c0;5+6+0=11 c0;answer 15"
    with pytest.raises(ValueError, match="non-negative"):
        addition_solution(-1, 5)


def test_arithmetic_reward_is_exact(arithmetic):
    example = Example("4721+985", "5706", addition_solution(4721, 985))
    wrong = example.solution.replace("answer 5706", "answer 5707")
    assert arithmetic.reward(wrong, example) == 0.0
    assert arithmetic.reward("answer 05706", example) == 0.0  # a leading zero is not the answer
    assert arithmetic.reward("answer 570", example) == 0.0
    assert arithmetic.reward("5706", example) == 0.0  # no answer marker
    assert arithmetic.reward("answer 5706", example) == 1.0
    assert arithmetic.reward("", example) == 0.0
    assert arithmetic.reward("\x00\xff<eos>;;answer \n", example) == 0.0
    assert arithmetic.extract_answer("1+5+0=6 c0;answer 5706") == "5706"
    assert arithmetic.extract_answer("no marker here") is None


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_arithmetic_reward_never_raises_on_garbage(completion):
    task = get_task("arithmetic", num_train=0, num_eval=1)
    assert task.reward(completion, task.eval_examples[0]) in (0.0, 1.0)


def test_arithmetic_refuses_a_data_path():
    with pytest.raises(ValueError, match="generated"):
        get_task("arithmetic", data_path="somewhere.jsonl")


# -----------------------------------------------------------------------------
# long-addition: the same sums on up to 16 digits, one narrated line per column


@pytest.fixture(scope="module")
def long_addition():
    return get_task("long-addition")


def test_long_addition_format_and_forgotten_carries():
    assert long_addition_solution(4721, 985) == ("a: 1+5+0=6 write 6 carry 0\nb: 2+8+0=10 write 0 carry 1\n"
                                                 "c: 7+9+1=17 write 7 carry 1\nd: 4+0+1=5 write 5 carry 0\n"
                                                 "answer 5706")
    assert long_addition_solution(99, 1) == "a: 9+1+0=10 write 0 carry 1\nb: 9+0+1=10 write 0 carry 1\nanswer 100"
    assert get_task("long-addition").prompt_text(Example("4721+985", "5706")) == "d4c7b2a1+c9b8a5="
    assert place_tagged(10**13) == "n1" + "".join(f"{tag}0" for tag in "mlkjihgfedcba")
    # the callback sees each carrying column's sum; a dropped carry propagates to the answer
    sums = []
    slipped = long_addition_solution(58, 67, forget_carry=lambda total: sums.append(total) or total == 15)
    assert sums == [15, 11]  # 8+7+0 (dropped), then 5+6+0: the next column no longer adds the carry
    assert slipped == "a: 8+7+0=15 write 5 carry 0\nb: 5+6+0=11 write 1 carry 1\nanswer 115"
    with pytest.raises(ValueError, match="non-negative"):
        long_addition_solution(3, -4)


def test_long_addition_splits_are_deterministic_disjoint_and_sized(long_addition):
    again = get_task("long-addition")
    assert long_addition.eval_examples == again.eval_examples
    assert long_addition.train_examples[:500] == again.train_examples[:500]
    assert (len(long_addition.train_examples), len(long_addition.eval_examples)) == (20000, 200)
    pairs = lambda examples: {frozenset(e.question.split("+")) for e in examples}  # noqa: E731
    assert not pairs(long_addition.train_examples) & pairs(long_addition.eval_examples)
    assert get_task("long-addition", num_train=10).eval_examples == long_addition.eval_examples
    assert get_task("long-addition", seed=1, num_train=0, num_eval=10).eval_examples != long_addition.eval_examples[:10]
    # another task name draws another stream from the same seed
    assert get_task("arithmetic", num_train=0, num_eval=10).eval_examples[0] != long_addition.eval_examples[0]


def test_long_addition_answers_are_long_right_and_end_in_the_checked_answer(long_addition):
    lengths = []
    for example in long_addition.train_examples + long_addition.eval_examples:
        left, right = map(int, example.question.split("+"))
        assert 3 <= max(len(str(left)), len(str(right))) <= 14 and min(len(str(left)), len(str(right))) >= 2
        assert example.answer == str(left + right)
        assert example.solution.endswith(f"\nanswer {left + right}")
        assert example.solution.count("\n") == max(len(str(left)), len(str(right)))
        lengths.append(len(example.solution) + 1)  # character-level tokens, plus <eos>
    assert long_addition.reward(long_addition.eval_examples[0].solution, long_addition.eval_examples[0]) == 1.0
    lengths.sort()
    assert lengths[len(lengths) // 2] >= 200 and lengths[-1] >= 400 and lengths[-1] <= 440


def test_long_addition_reward_is_exact_and_a_slip_anywhere_costs_it(long_addition):
    example = next(e for e in long_addition.eval_examples if e.solution.count("carry 1") >= 3)
    left, right = map(int, example.question.split("+"))
    assert long_addition.reward(example.solution, example) == 1.0
    for slip in range(example.solution.count("carry 1")):  # drop the first, second, ... carry alone
        seen = iter(range(100))
        wrong = long_addition_solution(left, right, forget_carry=lambda total: next(seen) == slip)
        assert wrong != example.solution and long_addition.reward(wrong, example) == 0.0
    assert long_addition.reward("answer " + example.answer, example) == 1.0
    assert long_addition.reward("answer 0" + example.answer, example) == 0.0
    assert long_addition.reward(example.solution[:-1], example) == 0.0
    assert long_addition.reward("", example) == 0.0
    with pytest.raises(ValueError, match="generated"):
        get_task("long-addition", data_path="x.jsonl")


# -----------------------------------------------------------------------------
# gsm8k, offline through the fixture


@pytest.fixture(scope="module")
def gsm8k_folder(tmp_path_factory):
    return write_gsm8k_fixture(tmp_path_factory.mktemp("gsm8k"), num_train=16, num_eval=8)


def test_gsm8k_fixture_loads_offline_with_correct_gold_answers(gsm8k_folder):
    task = get_task("gsm8k", data_path=str(gsm8k_folder))
    assert (len(task.train_examples), len(task.eval_examples)) == (16, 8)
    assert task.uses_chat_template
    for example in task.train_examples + task.eval_examples:
        # the fixture's reasoning is "x op y = z": check z, and that the gold answer is z without commas
        x, operator, y, z = re.search(r"(\d+) ([-+*]) (\d+) = (\d+)", example.solution).groups()
        assert int(z) == {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[operator]
        assert example.answer == z
        assert "<<" not in example.solution
        assert task.reward(example.solution, example) == 1.0
    prompt = task.prompt_text(task.eval_examples[0])
    assert prompt.startswith(task.eval_examples[0].question) and "\\boxed{}" in prompt


def test_gsm8k_reward(gsm8k_folder):
    task = get_task("gsm8k", data_path=str(gsm8k_folder))
    example = task.eval_examples[0]
    gold = example.answer
    wrong = str(int(gold) + 1)
    assert task.reward(f"Adding up gives the total. \\boxed{{{gold}}}", example) == 1.0
    assert task.reward(f"Adding up gives the total.\n#### {gold}", example) == 1.0
    assert task.reward(f"So the answer is {gold}", example) == 1.0
    assert task.reward(f"\\boxed{{{wrong}}}", example) == 0.0
    assert task.reward(f"#### {wrong}", example) == 0.0
    assert task.reward("", example) == 0.0
    assert task.reward("}}}\\boxed{{{((( \x00", example) == 0.0
    thousands = Example("q", "1250")
    assert task.reward("\\boxed{1,250}", thousands) == 1.0
    assert task.reward("The answer is 1,250.", thousands) == 1.0


def test_gsm8k_reward_works_outside_the_main_thread(gsm8k_folder):
    """math_verify's timeout uses signal.alarm, which only the main thread
    may set; a web UI scores completions in worker threads."""
    task = get_task("gsm8k", data_path=str(gsm8k_folder))
    example = task.eval_examples[0]
    results = []
    worker = threading.Thread(target=lambda: results.append(task.reward(f"\\boxed{{{example.answer}}}", example)))
    worker.start()
    worker.join()
    assert results == [1.0]


def test_gsm8k_single_file_is_split_deterministically(gsm8k_folder, tmp_path):
    single = tmp_path / "all.jsonl"
    single.write_text((gsm8k_folder / "train.jsonl").read_text())
    task = get_task("gsm8k", data_path=str(single), num_eval=4)
    again = get_task("gsm8k", data_path=str(single), num_eval=4)
    assert (len(task.train_examples), len(task.eval_examples)) == (12, 4)
    assert task.eval_examples == again.eval_examples
    assert not {e.question for e in task.train_examples} & {e.question for e in task.eval_examples}


def test_gsm8k_bad_paths_and_records_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        get_task("gsm8k", data_path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="train.jsonl and test.jsonl"):
        get_task("gsm8k", data_path=str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(ValueError, match="####"):
        get_task("gsm8k", data_path=str(bad), num_eval=1)


def test_gsm8k_without_hub_points_to_data_path(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="--data-path") as error:
        get_task("gsm8k")
    assert "arithmetic" in str(error.value) and "unreachable" in str(error.value)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown task") as error:
        get_task("mmlu")
    assert all(name in str(error.value) for name in ("arithmetic", "long-addition", "gsm8k"))


# -----------------------------------------------------------------------------
# the embedded tiny model


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_QWEN3_DIR)


def test_tokenizer_is_character_level_and_round_trips(tokenizer, arithmetic):
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left"
    assert not getattr(tokenizer, "chat_template", None)
    samples = [arithmetic.prompt_text(e) + e.solution for e in arithmetic.eval_examples[:20]]
    samples += ["  two  spaces \n\ttab", string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", ""),
                "Q: 3 apples?\nA: \\boxed{3}."]
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text
    ids = tokenizer.encode("12", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "12"


def test_committed_model_loads_generates_and_forgets_carries(tokenizer, arithmetic):
    """The warm start's planted flaw: greedy decoding forgets every carry (so
    it is right exactly on carry-free problems), leaving room for RL."""
    import torch
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(TINY_QWEN3_DIR)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    examples = arithmetic.eval_examples[:16]
    inputs = tokenizer([arithmetic.prompt_text(e) for e in examples], return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=96, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    completions = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    forgotten = [addition_solution(*map(int, e.question.split("+")), forget_carry=lambda: True) for e in examples]
    assert sum(c == f for c, f in zip(completions, forgotten)) >= 14
    for completion, example in zip(completions, examples):
        carry_free = " c1" not in example.solution
        if completion == addition_solution(*map(int, example.question.split("+")), forget_carry=lambda: True):
            assert arithmetic.reward(completion, example) == (1.0 if carry_free else 0.0)


def test_warm_start_report_has_room_to_improve():
    report = json.loads((TINY_QWEN3_DIR / "warm_start.json").read_text())
    assert 0.10 <= report["greedy_accuracy"] <= 0.35
    assert report["pass_at_8_t1"] >= 0.60
    assert (TINY_QWEN3_DIR / "model.safetensors").stat().st_size < 10_000_000


# -----------------------------------------------------------------------------
# the warm-start script (scripts/make_tiny_model.py), smoke-run with tiny settings


def test_warm_start_script_writes_a_loadable_model_and_its_report(tmp_path):
    """Two SFT steps on the long task: the folder it writes is what `--model` folders must be
    (Qwen3 config, safetensors, an AutoTokenizer-loadable character tokenizer) plus the report."""
    import importlib.util

    from transformers import AutoTokenizer

    from minnat.models import load_model
    from minnat.rollout import generate

    spec = importlib.util.spec_from_file_location("make_tiny_model", TINY_QWEN3_DIR.parents[2] / "scripts" /
                                                  "make_tiny_model.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # its dataclasses look their module up there
    spec.loader.exec_module(script)
    out = tmp_path / "model"
    report = script.main(["--task", "long-addition", "--steps", "2", "--batch-size", "4", "--num-train", "40",
                          "--eval-problems", "2", "--pass-at-k-problems", "1", "--threads", "1",
                          "--forget-carry", "10:0.5,11:0.25", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    saved = json.loads((out / "warm_start.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["task"] == "long-addition" and saved["train_steps"] == 2 and saved["forget_carry"] == {"10": 0.5,
                                                                                                      "11": 0.25}
    for key in ("greedy_accuracy", "pass_at_8_t1", "sample_accuracy_t1", "parameters", "command",
                "greedy_exactly_the_teachers_likeliest_solution"):
        assert key in saved
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "d4c7b2a1+c9b8a5=a: 1+5+0=6 write 6 carry 0\n"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    model, _ = load_model(str(out))
    task = get_task("long-addition", num_train=0, num_eval=2)
    batch = generate(model, tokenizer, task, task.eval_examples, max_new_tokens=8)
    assert batch.response_mask.shape == (2, 8)
    with pytest.raises(ValueError, match="forget-carry"):
        script.parse_forget_carry("10=0.5")


def test_long_addition_model_and_report():
    """The committed long-task model: Qwen3 in safetensors under 20 MB, made for this task's
    prompts, with the planted flaw leaving room to improve (greedy low, samples sometimes right)."""
    from transformers import AutoTokenizer

    from minnat.assets import TINY_QWEN3_LONG_DIR

    report = json.loads((TINY_QWEN3_LONG_DIR / "warm_start.json").read_text())
    assert report["task"] == "long-addition"
    assert report["greedy_accuracy"] <= 0.5 and report["pass_at_8_t1"] >= 0.5
    assert report["pass_at_8_t1"] >= report["greedy_accuracy"] + 0.2
    assert (TINY_QWEN3_LONG_DIR / "model.safetensors").stat().st_size < 20_000_000
    tokenizer = AutoTokenizer.from_pretrained(TINY_QWEN3_LONG_DIR)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_slip_count_finds_where_the_planted_habit_can_slip():
    long_task, short_task = get_task("long-addition"), get_task("arithmetic")
    example = Example(question="17184340+63221790", answer="80406130",
                      solution=long_task.solution(17184340, 63221790))
    # columns b (4+9=13), c (3+7+1=11), e (8+2=10), g (7+3=10): three sum to exactly 10 or 11
    assert long_task.slip_count(example) == 3
    assert short_task.slip_count(Example(question="68+93", answer="161",
                                         solution=short_task.solution(68, 93))) == 2  # 8+3 and 6+9+1 carry


# -----------------------------------------------------------------------------
# late-credit: random scratch work, then a short column sum that alone decides the reward


def test_late_credit_answers_are_long_and_decided_in_their_last_part():
    from minnat.tasks import SCRATCH_TAGS, column_addition, late_credit_solution

    task = get_task("late-credit")
    assert column_addition(4721, 985) == "a: 1+5+0=6 c0\nb: 2+8+0=10 c1\nc: 7+9+1=17 c1\nd: 4+0+1=5 c0\nanswer 5706"
    assert task.prompt_text(Example("4721+985", "5706")) == "d4c7b2a1+c9b8a5="
    lengths, decided = [], []
    for example in task.eval_examples:
        lines = example.solution.split("\n")
        scratch = lines[:len(SCRATCH_TAGS)]
        assert [line[0] for line in scratch] == list(SCRATCH_TAGS)
        assert all(len(line) == 11 and line[2:6].isdigit() and line[7:].isdigit() for line in scratch)
        assert task.reward(example.solution, example) == 1.0
        left, right = map(int, example.question.split("+"))
        assert "\n".join(lines[len(SCRATCH_TAGS):]) == column_addition(left, right)
        lengths.append(len(example.solution) + 1)  # character-level tokens, plus EOS
        decided.append(1 - len(column_addition(left, right)) / len(example.solution))
    lengths.sort()
    assert lengths[len(lengths) // 2] >= 200            # median answer length, the floor
    assert min(decided) > 0.65                           # the sum starts after two thirds of every answer
    # The scratch never changes the reward: any scratch, or none, with the right sum earns 1; a slip costs it.
    example = next(e for e in task.eval_examples if task.slip_count(e) >= 2)
    left, right = map(int, example.question.split("+"))
    for seed in range(5):
        assert task.reward(late_credit_solution(left, right, random.Random(seed)), example) == 1.0
    assert task.reward(column_addition(left, right), example) == 1.0
    slipped = late_credit_solution(left, right, random.Random(0), forget_carry=lambda: True)
    assert task.reward(slipped, example) == 0.0
    assert task.reward(example.solution[:-1], example) == 0.0 and task.reward("", example) == 0.0
    assert task.reward("answer 0" + example.answer, example) == 0.0


def test_late_credit_splits_and_data_path():
    task, again = get_task("late-credit"), get_task("late-credit", num_train=10)
    assert task.eval_examples == again.eval_examples and len(task.train_examples) == 20000
    pairs = lambda examples: {e.question for e in examples}  # noqa: E731
    assert not pairs(task.train_examples) & pairs(task.eval_examples)
    with pytest.raises(ValueError, match="generated, not loaded"):
        get_task("late-credit", data_path="x.jsonl")


def test_late_credit_model_loads_writes_scratch_then_the_sum_and_has_room_to_improve():
    """The committed late-credit model (`--model embedded --task late-credit`): loads, and greedily
    writes 16 scratch lines then a well-formed sum with the teacher's habit (carries dropped)."""
    from minnat.assets import TINY_QWEN3_LATE_CREDIT_DIR
    from minnat.models import load_model, model_location
    from minnat.rollout import generate
    from minnat.tasks import SCRATCH_TAGS

    assert model_location("embedded", "late-credit") == str(TINY_QWEN3_LATE_CREDIT_DIR)
    report = json.loads((TINY_QWEN3_LATE_CREDIT_DIR / "warm_start.json").read_text())
    assert report["task"] == "late-credit" and report["scratch_loss_weight"] < 1
    assert report["greedy_accuracy"] <= 0.35 and report["pass_at_8_t1"] >= report["greedy_accuracy"] + 0.3
    assert (TINY_QWEN3_LATE_CREDIT_DIR / "model.safetensors").stat().st_size < 20_000_000
    torch.set_num_threads(1)
    model, tokenizer = load_model("embedded", task="late-credit")
    task = get_task("late-credit", num_train=0, num_eval=8)
    batch = generate(model, tokenizer, task, task.eval_examples, max_new_tokens=420, greedy=True)
    for completion in batch.completions:
        lines = completion.split("\n")
        assert [line[:1] for line in lines[:len(SCRATCH_TAGS)]] == list(SCRATCH_TAGS)
        assert lines[-1].startswith("answer ") and lines[len(SCRATCH_TAGS)].startswith("a: ")
