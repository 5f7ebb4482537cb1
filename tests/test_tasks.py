"""Tests for minnat/tasks.py and the embedded tiny model in minnat/assets/."""

import json
import re
import string
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minnat.assets import TINY_QWEN3_DIR
from minnat.tasks import Example, addition_solution, get_task, write_gsm8k_fixture


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
    assert "arithmetic" in str(error.value) and "gsm8k" in str(error.value)


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
