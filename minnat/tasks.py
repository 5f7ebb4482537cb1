"""
Tasks and rewards: what the model is asked, and how its answer is scored.

A task is three things: a list of training examples, a held-out list of
evaluation examples, and a reward function that turns a completion (the text
the model wrote after the prompt) into 1.0 if its final answer is right and
0.0 otherwise. GRPO needs nothing more: it samples a group of completions per
prompt, scores them with `reward`, and pushes up the ones that beat their
group's average.

Two tasks live here:

- "arithmetic" (the embedded default): multi-digit addition written out digit
  by digit, least-significant digit first, with explicit carries. It needs no
  download, its completions are tens of characters long (so token-level
  tricks have something to work on), and its reward is an exact checker. The
  tiny character-level Qwen3 in `minnat/assets/tiny-qwen3/` was warm-started
  on it (see `scripts/make_tiny_model.py`).
- "gsm8k": grade-school word problems in the GSM8K JSONL format, scored with
  `math_verify`. This is the task of the paper; it needs a real chat model.

`get_task(name, ...)` is the one entry point the rest of the code uses.
"""

from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path

# -----------------------------------------------------------------------------
# the common interface


@dataclass(frozen=True)
class Example:
    """One problem: the raw question, its gold final answer, and optionally the
    worked solution a perfect model would write (the completion, without EOS).
    Solutions are what supervised warm-starting trains on, and a handy test
    oracle: `task.reward(example.solution, example)` is always 1.0."""

    question: str
    answer: str
    solution: str | None = None


class Task:
    """Base class. A subclass fills `name`, `train_examples`, `eval_examples`,
    `uses_chat_template` and implements `prompt_text` and `extract_answer`;
    the default `reward` compares the extracted answer with the gold one."""

    name: str = "task"
    uses_chat_template: bool = False
    train_examples: list[Example]
    eval_examples: list[Example]

    def prompt_text(self, example: Example) -> str:
        """The text the model sees before its answer. No chat template is
        applied here: callers wrap it when `uses_chat_template` is True."""
        raise NotImplementedError

    def extract_answer(self, completion: str) -> str | None:
        """The final answer written in `completion`, or None if there is none."""
        raise NotImplementedError

    def reward(self, completion: str, example: Example) -> float:
        """1.0 if the completion's final answer equals the gold answer, else
        0.0. Never raises: garbage text simply earns nothing."""
        try:
            return 1.0 if self.extract_answer(completion) == example.answer else 0.0
        except Exception:
            return 0.0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, "
                f"train={len(self.train_examples)}, eval={len(self.eval_examples)})")


# -----------------------------------------------------------------------------
# "arithmetic": long addition, one digit column per step

ANSWER_MARKER = "answer "
ARITHMETIC_MIN_DIGITS = 2
ARITHMETIC_MAX_DIGITS = 6


def addition_solution(left: int, right: int, forget_carry=None) -> str:
    """The worked solution for `left + right`, written the way a child does
    long addition: one step per digit column, from the least-significant
    digit, each step `a+b+carry_in=sum cCARRY_OUT`, then the answer.

        addition_solution(4721, 985)
        -> "1+5+0=6 c0;2+8+0=10 c1;7+9+1=17 c1;4+0+1=5 c0;answer 5706"

    Every step has the same shape, so a small character-level model can learn
    it: copy the column's two digits from the prompt, copy the incoming carry
    from the previous step, add, write the carry. The answer is the last digit
    of each column's sum read backwards, with a leading 1 if the last column
    carried.

    `forget_carry`, if given, is a function called once for each column whose
    sum is 10 or more; when it returns True the step writes `c0` instead of
    `c1` and the next column adds 0: a sloppy student who forgets a carry. The
    rest of the solution stays consistent with that mistake, so the final
    answer comes out wrong. `scripts/make_tiny_model.py` uses this to make a
    warm-start model that is sometimes right and has room to improve.
    """
    columns, answer = carried_columns(left, right, forget_carry, "addition_solution")
    steps = [f"{a}+{b}+{carry}={total} c{carry_out}" for a, b, carry, total, carry_out in columns]
    return ";".join(steps) + ";" + ANSWER_MARKER + answer


def carried_columns(left: int, right: int, forget_carry=None, caller: str = "carried_columns"):
    """The schoolbook columns of left + right, ones first, as the worked solutions write them.

    Returns ([(a, b, carry_in, total, carry_out), ...], answer): `answer` is each column's last digit
    read backwards, with a leading 1 if the last column carried. `forget_carry()` is called for each
    column whose sum is 10 or more; True makes that column carry 0 (the sloppy teacher's slip), and
    every later column and the answer stay consistent with it."""
    if left < 0 or right < 0:
        raise ValueError(f"{caller} takes non-negative integers, got {left} and {right}.")
    left_digits, right_digits = str(left)[::-1], str(right)[::-1]
    columns, answer_digits, carry = [], [], 0
    for column in range(max(len(left_digits), len(right_digits))):
        a = int(left_digits[column]) if column < len(left_digits) else 0
        b = int(right_digits[column]) if column < len(right_digits) else 0
        total = a + b + carry
        carry_out = 1 if total >= 10 else 0
        if carry_out and forget_carry is not None and forget_carry():
            carry_out = 0
        columns.append((a, b, carry, total, carry_out))
        answer_digits.append(str(total % 10))
        carry = carry_out
    if carry:
        answer_digits.append("1")
    return columns, "".join(reversed(answer_digits))


class ArithmeticTask(Task):
    """Addition of two random integers of 2 to 6 digits, prompt `"4721+985="`,
    completion `addition_solution(4721, 985)`. The splits are fixed by the seed:
    the held-out problems are drawn first (so they do not change when you ask
    for more training data), then training problems are drawn skipping any pair
    already used, in either order, so the splits are disjoint."""

    name = "arithmetic"
    uses_chat_template = False  # the tiny model is a bare character-level LM

    def __init__(self, seed: int = 0, num_train: int = 20000, num_eval: int = 200):
        if num_train < 0 or num_eval < 0:
            raise ValueError(f"num_train and num_eval must be non-negative, got {num_train} and {num_eval}.")
        rng = random.Random(f"minnat-{self.name}-{seed}")
        seen: set[tuple[int, int]] = set()

        def draw(count: int) -> list[Example]:
            examples = []
            while len(examples) < count:
                left, right = self.random_pair(rng)
                if (left, right) in seen:
                    continue
                seen.add((left, right))
                seen.add((right, left))
                examples.append(Example(question=f"{left}+{right}", answer=str(left + right),
                                        solution=self.solution(left, right)))
            return examples

        self.eval_examples = draw(num_eval)
        self.train_examples = draw(num_train)

    def random_pair(self, rng: random.Random) -> tuple[int, int]:
        return self.random_operand(rng), self.random_operand(rng)

    @staticmethod
    def solution(left: int, right: int) -> str:
        return addition_solution(left, right)

    @staticmethod
    def random_operand(rng: random.Random) -> int:
        """A number whose digit count is uniform in 2..6 (so short and long
        problems are equally common), with no leading zero."""
        digits = rng.randint(ARITHMETIC_MIN_DIGITS, ARITHMETIC_MAX_DIGITS)
        return rng.randint(10 ** (digits - 1), 10**digits - 1)

    @staticmethod
    def slip_count(example: Example) -> int:
        """Carries in the worked answer: where the embedded arithmetic model's planted habit (a
        teacher that forgot carries) can slip."""
        return example.solution.count("c1")

    def prompt_text(self, example: Example) -> str:
        return example.question + "="

    def extract_answer(self, completion: str) -> str | None:
        """The digits right after the first `answer ` marker, exactly as
        written (so a leading zero makes the answer wrong)."""
        match = re.search(re.escape(ANSWER_MARKER) + r"(\d+)", completion)
        return match.group(1) if match else None


# -----------------------------------------------------------------------------
# "long-addition": the same long addition on numbers of up to 14 digits, each column
# narrated the way it is taught, so that worked answers are hundreds of tokens long

LONG_ADDITION_MIN_DIGITS = 3    # digits of the longer operand: uniform in 3..14
LONG_ADDITION_MAX_DIGITS = 14
LONG_ADDITION_SHORTER_MIN_DIGITS = 2
PLACE_TAGS = "abcdefghijklmnopqrstuvwxyz"  # a = ones, b = tens, c = hundreds, ...


def place_tagged(number: int) -> str:
    """`number` with each digit preceded by the letter of its place: 4721 -> "d4c7b2a1"."""
    digits = str(number)
    if len(digits) > len(PLACE_TAGS):
        raise ValueError(f"place tags cover {len(PLACE_TAGS)} digits; {number} has {len(digits)}.")
    return "".join(PLACE_TAGS[len(digits) - 1 - index] + digit for index, digit in enumerate(digits))


def long_addition_solution(left: int, right: int, forget_carry=None) -> str:
    """The worked solution for `left + right` with one line per digit column, from the ones,
    each line `place: a+b+carry_in=sum write digit carry carry_out`, then the answer:

        long_addition_solution(4721, 985)
        -> "a: 1+5+0=6 write 6 carry 0\n"
           "b: 2+8+0=10 write 0 carry 1\n"
           "c: 7+9+1=17 write 7 carry 1\n"
           "d: 4+0+1=5 write 5 carry 0\n"
           "answer 5706"

    A line is ~28 characters, so with the character-level tokenizer a 14-column sum is a
    ~415-token answer. Every line reads the carry the line before wrote, and the answer is the
    written digits read backwards: a mistake in any column propagates to the checked answer.
    The place letter says which digits the line adds: the prompt tags every digit with it
    (`LongAdditionTask.prompt_text`), so a line finds its digits by content, not by counting.

    `forget_carry`, if given, is called with the column's sum (carry included) for each column
    whose sum is 10 or more; when it returns True the line writes `carry 0` instead of
    `carry 1`, and the rest of the solution stays consistent with that slip (so the answer is
    wrong). `scripts/make_tiny_model.py --task long-addition` uses it to plant the warm-start
    model's flaw.
    """
    if left < 0 or right < 0:
        raise ValueError(f"long_addition_solution takes non-negative integers, got {left} and {right}.")
    left_digits, right_digits = str(left)[::-1], str(right)[::-1]
    lines, answer_digits, carry = [], [], 0
    for column in range(max(len(left_digits), len(right_digits))):
        a = int(left_digits[column]) if column < len(left_digits) else 0
        b = int(right_digits[column]) if column < len(right_digits) else 0
        total = a + b + carry
        carry_out = 1 if total >= 10 else 0
        if carry_out and forget_carry is not None and forget_carry(total):
            carry_out = 0
        lines.append(f"{PLACE_TAGS[column]}: {a}+{b}+{carry}={total} write {total % 10} carry {carry_out}\n")
        answer_digits.append(str(total % 10))
        carry = carry_out
    if carry:
        answer_digits.append("1")
    return "".join(lines) + ANSWER_MARKER + "".join(reversed(answer_digits))


class LongAdditionTask(ArithmeticTask):
    """Addition of a 3-to-14-digit number and a shorter one (2 digits up to the same length),
    in random order. The question is `"4721+985"`; the prompt tags each digit with its place,
    `"d4c7b2a1+c9b8a5="`, and the completion is `long_addition_solution(4721, 985)`: median
    ~250 response tokens, longest ~415 (with EOS). The answer is checked exactly, as in
    "arithmetic", and the splits are drawn the same way (held-out first, disjoint, fixed by the
    seed).

    Why place tags: a line must find the i-th digit from the right of each operand. Found by
    position, that is the hardest part of long addition for a small transformer (a 2-layer,
    0.4M-parameter model warm-started on untagged prompts for 600 steps copied columns 0–3
    right 87–100% of the time and columns 4–13 only ~55%); found by a tag it is a copy by
    content, which such a model learns quickly (the "index hints" of Zhou et al., 2023)."""

    name = "long-addition"

    def random_pair(self, rng: random.Random) -> tuple[int, int]:
        """The longer operand's digit count is uniform in 3..14, the shorter's in 2..that."""
        digits = rng.randint(LONG_ADDITION_MIN_DIGITS, LONG_ADDITION_MAX_DIGITS)
        shorter = rng.randint(LONG_ADDITION_SHORTER_MIN_DIGITS, digits)
        pair = [rng.randint(10 ** (digits - 1), 10**digits - 1), rng.randint(10 ** (shorter - 1), 10**shorter - 1)]
        rng.shuffle(pair)
        return pair[0], pair[1]

    @staticmethod
    def solution(left: int, right: int) -> str:
        return long_addition_solution(left, right)

    def prompt_text(self, example: Example) -> str:
        left, right = (int(operand) for operand in example.question.split("+"))
        return f"{place_tagged(left)}+{place_tagged(right)}="

    @staticmethod
    def slip_count(example: Example) -> int:
        """Columns of the worked answer where the embedded model's planted habit can slip: those
        summing to exactly 10 or 11, whose carry the warm-start teacher usually dropped. A question
        with one such column is one the model gets right in some of its samples (~10–25%)."""
        return example.solution.count("=10 write") + example.solution.count("=11 write")


# -----------------------------------------------------------------------------
# "late-credit": long answers whose reward is decided only at their end, after long
# scratch work that does not matter. Built to show what RPC's 1/π_t weights buy.

LATE_CREDIT_MIN_DIGITS = 3      # digits of the longer operand: uniform in 3..5
LATE_CREDIT_MAX_DIGITS = 5
SCRATCH_TAGS = "ABCDEFGHIJKLMNOP"  # one scratch line each: 16 lines × 12 characters = 192 tokens
SCRATCH_GROUPS, SCRATCH_GROUP_DIGITS = 2, 4


def scratch_work(rng: random.Random) -> str:
    """The teacher's free scratch work: 16 lines `A 8301 5527`, tagged A..P, of random digits.

    It is long (192 tokens, three quarters of a typical answer), high-entropy (32 of every 48
    characters are uniform digits: log 10 ≈ 2.3 nats each) and has no bearing on the answer.
    Upper-case tags, so that nothing in it looks like the prompt's lower-case place tags."""
    return "".join(f"{tag} " + " ".join("".join(rng.choice("0123456789") for _ in range(SCRATCH_GROUP_DIGITS))
                                        for _ in range(SCRATCH_GROUPS)) + "\n"
                   for tag in SCRATCH_TAGS)


def column_addition(left: int, right: int, forget_carry=None) -> str:
    """The compact worked sum, one line per column from the ones, `a: 1+5+0=6 c0`, then the answer:

        column_addition(4721, 985)
        -> "a: 1+5+0=6 c0\nb: 2+8+0=10 c1\nc: 7+9+1=17 c1\nd: 4+0+1=5 c0\nanswer 5706"

    `forget_carry`, if given, is called for each column whose sum is 10 or more; when it returns
    True the line writes `c0` instead of `c1` and the rest stays consistent with that slip."""
    columns, answer = carried_columns(left, right, forget_carry, "column_addition")
    lines = [f"{PLACE_TAGS[index]}: {a}+{b}+{carry}={total} c{carry_out}\n"
             for index, (a, b, carry, total, carry_out) in enumerate(columns)]
    return "".join(lines) + ANSWER_MARKER + answer


def late_credit_solution(left: int, right: int, rng: random.Random, forget_carry=None) -> str:
    """Scratch work (`scratch_work(rng)`, 192 tokens) then the sum (`column_addition`, 46–88 tokens)."""
    return scratch_work(rng) + column_addition(left, right, forget_carry)


class LateCreditTask(ArithmeticTask):
    """Addition of a 3-to-5-digit number and a shorter one, answered after 16 lines of free scratch.

    The prompt is place-tagged as in "long-addition" (`"d4c7b2a1+c9b8a5="`); the completion is
    `late_credit_solution`: 192 tokens of random-digit scratch lines, then the compact column sum
    and `answer N` (median ~260 response tokens with EOS). The reward checks the answer only, so
    it is decided by the last ~25% of the response; the scratch — long, high-entropy — never
    changes it. Why this shape (README, "What the weights buy"): under RPC a token at relative
    position u is kept with probability π(u), which falls towards the end; training on the kept
    prefix with weight 1 (`rpc-unweighted`) gives the late, decisive tokens an expected weight
    ~π(u) while the early scratch tokens — pure noise for the reward — keep (more than) their
    full weight, and Adam's shared step size is spent on that noise. The 1/π_t weights restore
    every position's expected weight to full GRPO's. It is a planted, documented workload, in
    the same spirit as long-addition's planted habit, not a claim about how real answers look.

    `Example.solution` is a right answer whose scratch is seeded by the question (any scratch is
    as right as any other). The held-out and training splits are drawn as in "arithmetic"."""

    name = "late-credit"

    def random_pair(self, rng: random.Random) -> tuple[int, int]:
        """The longer operand's digit count is uniform in 3..5, the shorter's in 2..that, in random order."""
        digits = rng.randint(LATE_CREDIT_MIN_DIGITS, LATE_CREDIT_MAX_DIGITS)
        shorter = rng.randint(2, digits)
        pair = [rng.randint(10 ** (digits - 1), 10**digits - 1), rng.randint(10 ** (shorter - 1), 10**shorter - 1)]
        rng.shuffle(pair)
        return pair[0], pair[1]

    @staticmethod
    def solution(left: int, right: int) -> str:
        return late_credit_solution(left, right, random.Random(f"scratch-{left}+{right}"))

    def prompt_text(self, example: Example) -> str:
        left, right = (int(operand) for operand in example.question.split("+"))
        return f"{place_tagged(left)}+{place_tagged(right)}="

    @staticmethod
    def slip_count(example: Example) -> int:
        """Carries in the worked sum: where the embedded late-credit model's planted habit (a teacher
        that forgot 60% of carries) can slip."""
        return example.solution.count(" c1\n")


# -----------------------------------------------------------------------------
# "gsm8k": grade-school word problems, scored with math_verify

GSM8K_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def gsm8k_gold_answer(answer_field: str) -> str:
    """GSM8K answers end with `#### 72`; the gold answer is what follows,
    without thousands separators."""
    if "####" not in answer_field:
        raise ValueError(f"A GSM8K answer must end with '#### <number>', got: {answer_field[-80:]!r}")
    return answer_field.split("####")[-1].strip().replace(",", "")


def gsm8k_example(record: dict) -> Example:
    """A GSM8K record -> Example. The solution is the record's reasoning with
    the `<<48/2=24>>` calculator annotations removed, ending in the boxed
    answer our prompt asks for."""
    if "question" not in record or "answer" not in record:
        raise ValueError(f"A GSM8K record needs 'question' and 'answer' fields, got keys {sorted(record)}.")
    gold = gsm8k_gold_answer(record["answer"])
    reasoning = re.sub(r"<<[^>]*>>", "", record["answer"].split("####")[0]).strip()
    return Example(question=record["question"].strip(), answer=gold,
                   solution=f"{reasoning}\nThe final answer is \\boxed{{{gold}}}.")


def read_jsonl(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number} is not valid JSON ({error}); "
                                     "GSM8K data must be one JSON object per line.") from None
    return records


LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in `text`, commas stripped, trailing `.0` dropped."""
    numbers = LAST_NUMBER.findall(text)
    if not numbers:
        return None
    number = numbers[-1].replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


class GSM8KTask(Task):
    """GSM8K from local JSONL (`data_path`: a file, or a folder holding
    train.jsonl and test.jsonl) or from the Hugging Face hub. A single file is
    split deterministically by `seed` into train and eval (eval gets
    `num_eval` records, default a tenth)."""

    name = "gsm8k"
    uses_chat_template = True

    # math_verify guards parsing with signal.alarm, which only works in the
    # main thread; elsewhere (a web UI's worker thread) we turn the timeout
    # off and rely on the input cap below to keep parsing fast.
    math_verify_timeout_seconds = 5
    max_completion_chars_to_parse = 4000

    def __init__(self, data_path: str | None = None, seed: int = 0,
                 num_train: int | None = None, num_eval: int | None = None):
        train_records, eval_records = self.load_records(data_path, seed, num_eval)
        self.train_examples = [gsm8k_example(r) for r in train_records[:num_train]]
        self.eval_examples = [gsm8k_example(r) for r in eval_records[:num_eval]]

    @staticmethod
    def load_records(data_path: str | None, seed: int, num_eval: int | None):
        if data_path is not None:
            path = Path(data_path)
            if path.is_dir():
                train_file, test_file = path / "train.jsonl", path / "test.jsonl"
                if not train_file.exists() or not test_file.exists():
                    raise ValueError(f"The GSM8K folder {path} must contain train.jsonl and test.jsonl.")
                return read_jsonl(train_file), read_jsonl(test_file)
            if path.is_file():
                records = read_jsonl(path)
                random.Random(seed).shuffle(records)
                eval_count = num_eval if num_eval is not None else max(1, len(records) // 10)
                return records[eval_count:], records[:eval_count]
            raise ValueError(f"GSM8K data path {path} does not exist; pass a JSONL file "
                             "or a folder with train.jsonl and test.jsonl.")
        try:
            import datasets
            import huggingface_hub.constants as hub_constants

            from minnat.models import hub_reachable

            # Offline, datasets retries the hub for ~30 s before failing; with the hub unreachable only
            # a cached copy can load, so ask for that alone (seconds either way).
            offline = not hub_reachable()
            saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
            if offline:
                datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
            try:
                dataset = datasets.load_dataset("openai/gsm8k", "main")
            finally:
                datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
            return list(dataset["train"]), list(dataset["test"])
        except Exception as error:
            raise ValueError(
                "Could not load openai/gsm8k from the Hugging Face hub (is it unreachable, or are "
                f"you offline?): {type(error).__name__}: {error}. Pass --data-path with a local "
                "GSM8K-format JSONL file or folder, or use the embedded 'arithmetic' task.") from None

    def prompt_text(self, example: Example) -> str:
        return f"{example.question}\n{GSM8K_INSTRUCTION}"

    def math_verify_timeout(self) -> int | None:
        in_main_thread = threading.current_thread() is threading.main_thread()
        return self.math_verify_timeout_seconds if in_main_thread else None

    def extract_answer(self, completion: str) -> str | None:
        """The final answer as math_verify reads it (a boxed answer first,
        then any expression), else the last number in the text."""
        from math_verify import parse

        completion = completion[-self.max_completion_chars_to_parse:]
        try:
            parsed = parse(completion, parsing_timeout=self.math_verify_timeout())
        except Exception:
            parsed = []
        if parsed:
            return str(parsed[-1]).replace(",", "")
        return last_number(completion)

    def reward(self, completion: str, example: Example) -> float:
        try:
            from math_verify import parse, verify

            completion = completion[-self.max_completion_chars_to_parse:]
            timeout = self.math_verify_timeout()
            predicted = parse(completion, parsing_timeout=timeout)
            if predicted:
                gold = parse(f"${example.answer}$", parsing_timeout=timeout)
                return 1.0 if verify(gold, predicted, timeout_seconds=timeout) else 0.0
            fallback = last_number(completion)
            return 1.0 if fallback is not None and fallback == example.answer else 0.0
        except Exception:
            return 0.0


# -----------------------------------------------------------------------------
# an offline GSM8K-format fixture, so the gsm8k path can be tested without a hub

FIXTURE_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro"]
FIXTURE_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies"]


def fixture_record(rng: random.Random) -> dict:
    """One simple, correctly solved word problem in GSM8K's format. Some
    answers exceed 999 so they are written with a thousands comma, as GSM8K
    sometimes does."""
    name, item = rng.choice(FIXTURE_NAMES), rng.choice(FIXTURE_ITEMS)
    kind = rng.choice(["add", "subtract", "multiply"])
    if kind == "add":
        start, more = rng.randint(2, 900), rng.randint(2, 900)
        result = start + more
        question = f"{name} has {start} {item} and gets {more} more. How many {item} does {name} have now?"
        reasoning = f"{name} has {start} + {more} = <<{start}+{more}={result}>>{result} {item}."
    elif kind == "subtract":
        start = rng.randint(20, 900)
        given = rng.randint(1, start - 1)
        result = start - given
        question = f"{name} had {start} {item} and gave away {given}. How many {item} are left?"
        reasoning = f"{name} has {start} - {given} = <<{start}-{given}={result}>>{result} {item} left."
    else:
        boxes, per_box = rng.randint(2, 60), rng.randint(2, 90)
        result = boxes * per_box
        question = f"{name} buys {boxes} boxes with {per_box} {item} in each box. How many {item} is that?"
        reasoning = f"That is {boxes} * {per_box} = <<{boxes}*{per_box}={result}>>{result} {item}."
    return {"question": question, "answer": f"{reasoning}\n#### {result:,}"}


def write_gsm8k_fixture(folder, num_train: int = 16, num_eval: int = 8, seed: int = 0) -> Path:
    """Write a tiny self-made GSM8K-format dataset (train.jsonl, test.jsonl)
    into `folder` and return the folder, for offline tests and demos."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"minnat-gsm8k-fixture-{seed}")
    for filename, count in [("train.jsonl", num_train), ("test.jsonl", num_eval)]:
        with open(folder / filename, "w", encoding="utf-8") as file:
            for _ in range(count):
                file.write(json.dumps(fixture_record(rng)) + "\n")
    return folder


# -----------------------------------------------------------------------------
# the entry point

TASKS = {"arithmetic": ArithmeticTask, "long-addition": LongAdditionTask, "late-credit": LateCreditTask,
         "gsm8k": GSM8KTask}
GENERATED_TASKS = ("arithmetic", "long-addition", "late-credit")  # embedded: made here, no download


def get_task(name: str, *, data_path: str | None = None, seed: int = 0,
             num_train: int | None = None, num_eval: int | None = None) -> Task:
    """Build a task by name. `data_path` only applies to gsm8k; `num_train` and
    `num_eval` cap the split sizes (the generated tasks' defaults: 20000 and 200)."""
    if name in GENERATED_TASKS:
        if data_path is not None:
            raise ValueError(f"The {name} task is generated, not loaded: drop --data-path, "
                             "or use --task gsm8k to read GSM8K-format JSONL.")
        return TASKS[name](seed=seed,
                           num_train=20000 if num_train is None else num_train,
                           num_eval=200 if num_eval is None else num_eval)
    if name == "gsm8k":
        return GSM8KTask(data_path=data_path, seed=seed, num_train=num_train, num_eval=num_eval)
    raise ValueError(f"Unknown task {name!r}; known tasks are: {', '.join(sorted(TASKS))}.")
