"""
Make the embedded tiny models: character-level Qwen3s warm-started on an embedded task,
saved in Hugging Face format to minnat/assets/.

    python scripts/make_tiny_model.py                                   # "arithmetic" -> tiny-qwen3/
    python scripts/make_tiny_model.py --task long-addition --threads 1  # -> tiny-qwen3-long/
    python scripts/make_tiny_model.py --task late-credit --threads 1    # -> tiny-qwen3-late-credit/

All come from the same recipe (below), with the settings of `RECIPES`; the second is the
trainer's default. For "arithmetic" (2-6 digit sums, ~67-token answers) the numbers in this
docstring are its own; "long-addition" is described at the end.

Why this model exists: GRPO only learns when a group of sampled completions
contains both right and wrong answers. A model that is always wrong never sees
a reward; a model that is always right has nothing left to learn. For the demo
to show RL working in a few CPU minutes we need a starting point in between,
and a way to get there that is reproducible and honest about what it is.

How we get there, a "sloppy teacher": the model is trained with plain
supervised learning (AdamW, cross-entropy on the completion tokens only) on the
task's worked solutions, except that in each column whose sum is 10 or more the
teacher forgets the carry with probability FORGET_CARRY (60%): it writes `c0`
instead of `c1` and carries on consistently from that mistake, so the final
answer is wrong. For example, for 58+67=:

    right:   8+7+0=15 c1;5+6+1=12 c1;answer 125
    sloppy:  8+7+0=15 c0;5+6+0=11 c1;answer 115

The student learns the mechanics (copy the column's digits, add, write the
carry, read the answer back) and also the habit: after a sum of 10 or more it
writes `c0` about 60% of the time and `c1` about 40%. So
- greedy decoding picks the more likely `c0` and gets right only the problems
  without any carry (roughly 10-35% of held-out problems), while
- sampling at temperature 1 keeps each carry 40% of the time, so a group of 8
  samples usually holds a fully right solution (pass@8 well above greedy).
GRPO with the exact reward then only has to move one habit, the probability of
`c1` after a two-digit sum, past 50%, and greedy accuracy jumps. That is a
deliberately planted, easy-to-fix flaw, not a claim about how real models fail;
it makes the demo fast and its outcome predictable.

Measured for the committed model (seed 1337): greedy held-out accuracy 18.5%
(every greedy completion is exactly the all-carries-forgotten solution, so it is
right exactly on the carry-free problems), pass@8 at temperature 1 85%. A plain
on-policy GRPO check (16 prompts x 8 samples per step, AdamW lr 1e-4) took greedy
accuracy to 99% within 10 steps; at lr 3e-4 too (on a busy 2-core CPU: under 90
seconds); at lr 1e-3 the policy collapsed to reward 0, so keep the RL learning
rate small.

Why 2 layers: on 2 CPU cores a step of 64 sequences costs about 0.25 s for this
shape against about 0.6 s for 4 layers, and 2 layers already learn the mechanics
exactly (every greedy completion is a well-formed, internally consistent
solution) within the 1000 steps that fit the time budget.

The tokenizer is character-level over printable ASCII (plus `<pad>`, `<eos>`,
`<unk>`), so any ASCII text round-trips exactly through encode/decode. There
is no chat template: the model reads the raw prompt `4721+985=` and writes the
solution then `<eos>`.

Everything is seeded; the script prints the parameter count, held-out greedy
accuracy and pass@8 at temperature 1, and writes them with the settings to
warm_start.json next to the model.

The long-answer model ("long-addition", minnat/assets/tiny-qwen3-long/). The same
2-layer shape and sloppy-teacher recipe on sums of 3-14 digit numbers, one narrated line
per column (`minnat.tasks.long_addition_solution`, ~250-token answers, up to 413), with
the prompt's digits tagged by place (`d4c7b2a1+c9b8a5=`, see `LongAdditionTask`). Its
planted flaw is narrower than the short task's, so that a long answer is still sometimes
right: the teacher drops the carry of a column whose sum is exactly 10 (85% of the time)
or 11 (70%), and keeps every other carry. A model that learned the teacher therefore,
greedily, drops exactly those carries — wrong on every problem with such a column
(about three quarters of them, spread anywhere in the answer) — while sampling keeps them
often enough that some of a group of 8 is right. Fixing it means raising `carry 1` at
those lines wherever they fall in the answer: credit on tokens throughout the response,
which is where RPC's prefix cut has to be unbiased. Measured for the committed model:
see its warm_start.json (and README.md, Results).

The late-credit model ("late-credit", minnat/assets/tiny-qwen3-late-credit/). Each answer is
16 lines of random-digit scratch work (`minnat.tasks.scratch_work`, 192 tokens, fresh random
digits every time the teacher writes it) followed by a compact column sum of 3-5 digit numbers
(`a: 4+1+0=5 c0`, then `answer N`); the teacher drops 60% of all carries, as in "arithmetic", so
greedy decoding is right only on carry-free sums. Two changes to the recipe were needed, both
measured: the scratch's random digits get loss weight 0.2 (`--scratch-loss-weight`; their
cross-entropy cannot fall below log 10, and at full weight their noise held the lookup of the
prompt's digits back: 0% held-out greedy accuracy and 0% pass@8 after 800 steps at weight 1, the
first try), and 1600 steps instead of 800 (at weight 0.2 the loss fell sharply between steps 400
and 600; at step 800 greedy decoding already wrote the teacher's likeliest sum 88% of the time).
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from minnat.assets import TINY_QWEN3_DIR, TINY_QWEN3_LATE_CREDIT_DIR, TINY_QWEN3_LONG_DIR  # noqa: E402
from minnat.tasks import (SCRATCH_TAGS, Example, addition_solution, column_addition, get_task, late_credit_solution,  # noqa: E402
                          long_addition_solution)

# -----------------------------------------------------------------------------
# settings, one recipe per embedded task (the defaults reproduce the committed models)


@dataclass(frozen=True)
class Recipe:
    out: Path
    forget_carry: dict          # column sum (carry included) -> probability that the sloppy teacher drops its carry
    train_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    max_new_tokens: int         # the longest solution plus <eos>
    model_shape: dict
    seed: int = 1337
    weight_decay: float = 0.01
    eval_problems: int = 200    # held-out problems for greedy accuracy
    pass_at_k_problems: int = 100
    pass_at_k: int = 8
    eval_batch_size: int = 200
    scratch_loss_weight: float = 1.0  # late-credit: the loss weight of the scratch's random digits
    notes: dict = field(default_factory=dict)


RECIPES = {
    # 2-6 digit sums, ~67-token answers; the teacher drops 60% of all carries.
    "arithmetic": Recipe(
        out=TINY_QWEN3_DIR, forget_carry={total: 0.6 for total in range(10, 20)},
        train_steps=1000, batch_size=64, learning_rate=3e-3, warmup_steps=100, max_new_tokens=96,
        model_shape=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, intermediate_size=384, max_position_embeddings=256)),
    # 3-14 digit sums narrated column by column, ~250-token answers; the teacher drops the carry
    # of columns that only just reach ten (sum 10 or 11) most of the time, and never another.
    "long-addition": Recipe(
        out=TINY_QWEN3_LONG_DIR, forget_carry={10: 0.85, 11: 0.7},
        train_steps=800, batch_size=32, learning_rate=3e-3, warmup_steps=40, max_new_tokens=420,
        model_shape=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, intermediate_size=384, max_position_embeddings=512),
        eval_batch_size=100),
    # 16 lines of random-digit scratch, then a 3-5 digit column sum: ~260-token answers decided in their
    # last quarter; the teacher drops 60% of all carries (as in "arithmetic").
    "late-credit": Recipe(
        out=TINY_QWEN3_LATE_CREDIT_DIR, forget_carry={total: 0.6 for total in range(10, 20)},
        train_steps=1600, batch_size=32, learning_rate=3e-3, warmup_steps=40, max_new_tokens=420,
        model_shape=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, intermediate_size=384, max_position_embeddings=512),
        eval_batch_size=100, scratch_loss_weight=0.2),
}

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

# -----------------------------------------------------------------------------
# tokenizer


def build_tokenizer(max_length: int = 256):
    """A character-level tokenizer: one token per character of printable
    ASCII (tab and newline included), specials first so <pad> is id 0. The
    pre-tokenizer splits every character apart and the Fuse decoder glues
    tokens back without spaces, so decode(encode(text)) == text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    characters = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {token: index for index, token in enumerate([PAD, EOS, UNK] + characters)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=max_length)


# -----------------------------------------------------------------------------
# model


def build_model(tokenizer, model_shape: dict):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer), tie_word_embeddings=True, torch_dtype="float32",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        **model_shape)
    return Qwen3ForCausalLM(config)


# -----------------------------------------------------------------------------
# supervised warm start on the sloppy teacher's solutions


def sloppy_solution(task_name: str, example: Example, rng: random.Random, forget_carry: dict) -> str:
    """The teacher's worked solution: right, except that a column whose sum (carry included) is
    `total` has its carry dropped with probability forget_carry.get(total, 0)."""
    left, right = (int(operand) for operand in example.question.split("+"))
    if task_name in ("arithmetic", "late-credit"):
        probability = forget_carry[10]  # the same for every sum; these solutions do not pass it
        if task_name == "late-credit":  # fresh random scratch every time: it is free
            return late_credit_solution(left, right, rng, forget_carry=lambda: rng.random() < probability)
        return addition_solution(left, right, forget_carry=lambda: rng.random() < probability)
    return long_addition_solution(left, right,
                                  forget_carry=lambda total: total in forget_carry and rng.random() < forget_carry[total])


def likeliest_sloppy_solution(task_name: str, example: Example, forget_carry: dict) -> str:
    """What a model that learned the teacher perfectly writes greedily: every carry the teacher
    drops more often than not is dropped, every other carry kept. For late-credit, the sum after
    the scratch (the scratch is random: no greedy scratch is the teacher's)."""
    left, right = (int(operand) for operand in example.question.split("+"))
    if task_name == "late-credit":
        return column_addition(left, right, forget_carry=lambda: forget_carry[10] > 0.5)
    if task_name == "arithmetic":
        return addition_solution(left, right, forget_carry=lambda: forget_carry[10] > 0.5)
    return long_addition_solution(left, right, forget_carry=lambda total: forget_carry.get(total, 0.0) > 0.5)


def worked_part(task_name: str, completion: str) -> str:
    """What the diagnosis compares: the whole completion, or for late-credit what follows the scratch lines."""
    if task_name != "late-credit":
        return completion
    return "\n".join(completion.split("\n")[len(SCRATCH_TAGS):])


def training_batch(task, examples, tokenizer, rng, forget_carry, scratch_loss_weight=1.0):
    """Right-padded prompt+solution+<eos> sequences, with labels -100 on the prompt and the padding so
    only completion tokens are learned, and each label's loss weight: 1, except `scratch_loss_weight`
    on late-credit's random scratch digits (their cross-entropy cannot fall below log 10, and at
    full weight their noise slows learning the sum that follows)."""
    prompts = [task.prompt_text(example) for example in examples]
    completions = [sloppy_solution(task.name, example, rng, forget_carry) for example in examples]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    sequences = [p + c + [tokenizer.eos_token_id] for p, c in zip(prompt_ids, completion_ids)]
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), length), -100)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    loss_weights = torch.zeros((len(sequences), length))
    for row, (sequence, prompt, completion) in enumerate(zip(sequences, prompt_ids, completions)):
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        labels[row, len(prompt):len(sequence)] = torch.tensor(sequence[len(prompt):])
        attention_mask[row, :len(sequence)] = 1
        loss_weights[row, len(prompt):len(sequence)] = 1.0
        if task.name == "late-credit":  # character-level: completion character k is token len(prompt) + k
            scratch = len(completion) - len(worked_part(task.name, completion))
            for index, character in enumerate(completion[:scratch]):
                if character.isdigit():
                    loss_weights[row, len(prompt) + index] = scratch_loss_weight
    return input_ids, attention_mask, labels, loss_weights


def weighted_completion_loss(model, input_ids, attention_mask, labels, loss_weights):
    """Σ weight·cross-entropy / Σ weight over the completion tokens (next-token prediction); with every
    weight 1, transformers' own loss (so the committed models are reproduced exactly)."""
    if bool((loss_weights[labels != -100] == 1).all()):
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets, weights = labels[:, 1:], loss_weights[:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                  ignore_index=-100, reduction="none").view_as(weights)
    return (per_token * weights).sum() / weights.sum()


def train(model, tokenizer, task, recipe: Recipe, *, steps, batch_size, learning_rate, forget_carry, seed,
          log_every=50, check_every=0):
    """AdamW on the teacher's solutions; every `check_every` steps (0 = never) a quick greedy
    accuracy on 50 held-out problems, to see early whether the run is on track."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98),
                                  weight_decay=recipe.weight_decay)
    warmup = min(recipe.warmup_steps, max(1, steps // 10))

    def learning_rate_factor(step):  # linear warmup, then cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    model.train()
    start, running_loss = time.time(), 0.0
    for step in range(steps):
        examples = rng.sample(task.train_examples, batch_size)
        batch = training_batch(task, examples, tokenizer, rng, forget_carry, recipe.scratch_loss_weight)
        loss = weighted_completion_loss(model, *batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running_loss += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"step {step + 1:5d}/{steps}  loss {running_loss / ((step % log_every) + 1):.4f}  "
                  f"lr {scheduler.get_last_lr()[0]:.2e}  {time.time() - start:.0f}s", flush=True)
            running_loss = 0.0
        if check_every and (step + 1) % check_every == 0 and step + 1 < steps:
            model.eval()
            examples = task.eval_examples[:50]
            greedy = generate_completions(model, tokenizer, task, examples, recipe, do_sample=False)
            right = sum(task.reward(c, e) for c, e in zip(greedy, examples)) / len(examples)
            likeliest = sum(worked_part(task.name, c) == likeliest_sloppy_solution(task.name, e, forget_carry)
                            for c, e in zip(greedy, examples)) / len(examples)
            print(f"  check: greedy accuracy {right:.0%}, exactly the teacher's likeliest solution "
                  f"{likeliest:.0%} (50 held-out problems)", flush=True)
            model.train()
    model.eval()


# -----------------------------------------------------------------------------
# evaluation with transformers' generate


@torch.no_grad()
def generate_completions(model, tokenizer, task, examples, recipe: Recipe, *, do_sample, num_return_sequences=1,
                         batch_size=None):
    batch_size = batch_size or recipe.eval_batch_size
    completions = []
    for first in range(0, len(examples), batch_size):
        prompts = [task.prompt_text(example) for example in examples[first:first + batch_size]]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(
            **inputs, max_new_tokens=recipe.max_new_tokens, do_sample=do_sample,
            temperature=1.0 if do_sample else None, top_p=1.0 if do_sample else None, top_k=0 if do_sample else None,
            num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        completions += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return completions


def evaluate(model, tokenizer, task, recipe: Recipe, *, forget_carry, seed, eval_problems=None):
    """Greedy accuracy on the held-out problems and pass@k at temperature 1 on the first
    `pass_at_k_problems` of them, plus a diagnosis: how often the greedy completion is the right
    solution, or the sloppy teacher's likeliest one, character for character."""
    examples = task.eval_examples[:eval_problems or recipe.eval_problems]
    greedy = generate_completions(model, tokenizer, task, examples, recipe, do_sample=False)
    greedy_accuracy = sum(task.reward(c, e) for c, e in zip(greedy, examples)) / len(examples)
    likeliest = [likeliest_sloppy_solution(task.name, e, forget_carry) for e in examples]
    worked = [worked_part(task.name, c) for c in greedy]
    exact_right = sum(w == worked_part(task.name, e.solution) for w, e in zip(worked, examples)) / len(examples)
    exact_likeliest = sum(w == f for w, f in zip(worked, likeliest)) / len(examples)

    torch.manual_seed(seed)
    k = recipe.pass_at_k
    pass_examples = examples[:recipe.pass_at_k_problems]
    samples = generate_completions(model, tokenizer, task, pass_examples, recipe, do_sample=True,
                                   num_return_sequences=k, batch_size=max(1, recipe.eval_batch_size // 4))
    rewards = torch.tensor([task.reward(c, pass_examples[i // k]) for i, c in enumerate(samples)])
    rewards = rewards.view(len(pass_examples), k)
    return {
        "greedy_accuracy": greedy_accuracy,
        "greedy_exactly_the_right_solution": exact_right,
        "greedy_exactly_the_teachers_likeliest_solution": exact_likeliest,
        "sample_accuracy_t1": rewards.mean().item(),
        f"pass_at_{k}_t1": (rewards.max(dim=1).values).mean().item(),
        "greedy_examples": [{"prompt": task.prompt_text(e), "completion": c, "reward": task.reward(c, e)}
                            for e, c in list(zip(examples, greedy))[:5]],
    }


# -----------------------------------------------------------------------------


def save(model, tokenizer, out: Path, max_new_tokens: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.max_new_tokens = max_new_tokens
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # name the classic tokenizer class so transformers 4.x loads it too (5.x maps it to its backend)
    config_path = out / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def parse_forget_carry(text: str) -> dict:
    """"0.6" (every carry) or "10:0.85,11:0.7" (per column sum) -> {sum: probability}."""
    try:
        if ":" not in text:
            probabilities = {total: float(text) for total in range(10, 20)}
        else:
            probabilities = {int(key): float(value) for key, value in (item.split(":") for item in text.split(","))}
    except ValueError:
        raise ValueError(f"--forget-carry must be a probability (0.6) or sum:probability pairs "
                         f"(10:0.85,11:0.7); got {text!r}.") from None
    if not all(0.0 <= value <= 1.0 for value in probabilities.values()):
        raise ValueError(f"--forget-carry probabilities must be between 0 and 1; got {text!r}.")
    return probabilities


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arithmetic", choices=sorted(RECIPES),
                        help="which embedded task (and model) to make; the other settings default to its recipe")
    parser.add_argument("--out", default=None, help="folder to write the model into (default: the recipe's, in "
                                                     "minnat/assets/)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--forget-carry", default=None,
                        help="drop-carry probability: one number for every carry, or sum:probability pairs")
    parser.add_argument("--num-train", type=int, default=None,
                        help="training problems (default: the task's own split, as the RL run sees it)")
    parser.add_argument("--eval-problems", type=int, default=None, help="held-out problems for the final report")
    parser.add_argument("--pass-at-k-problems", type=int, default=None,
                        help="held-out problems for pass@k (default: the recipe's)")
    parser.add_argument("--scratch-loss-weight", type=float, default=None,
                        help="late-credit: loss weight of the scratch's random digits (default: the recipe's)")
    parser.add_argument("--check-every", type=int, default=0, help="quick greedy check every N steps (0 = off)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    recipe = RECIPES[args.task]
    if args.pass_at_k_problems is not None:
        recipe = replace(recipe, pass_at_k_problems=args.pass_at_k_problems)
    if args.scratch_loss_weight is not None:
        recipe = replace(recipe, scratch_loss_weight=args.scratch_loss_weight)
    seed = recipe.seed if args.seed is None else args.seed
    steps = recipe.train_steps if args.steps is None else args.steps
    batch_size = recipe.batch_size if args.batch_size is None else args.batch_size
    learning_rate = recipe.learning_rate if args.learning_rate is None else args.learning_rate
    forget_carry = recipe.forget_carry if args.forget_carry is None else parse_forget_carry(args.forget_carry)
    out = Path(args.out) if args.out else recipe.out

    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    task = get_task(args.task, seed=0, num_train=args.num_train)  # the task's own splits, as the RL run sees them
    tokenizer = build_tokenizer(recipe.model_shape["max_position_embeddings"])
    model = build_model(tokenizer, recipe.model_shape)
    parameter_count = sum(p.numel() for p in model.parameters())
    print(f"tiny Qwen3 for {args.task}: {parameter_count:,} parameters, vocabulary {len(tokenizer)}")

    train(model, tokenizer, task, recipe, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
          forget_carry=forget_carry, seed=seed, check_every=args.check_every)
    train_seconds = time.time() - started

    metrics = evaluate(model, tokenizer, task, recipe, forget_carry=forget_carry, seed=seed,
                       eval_problems=args.eval_problems)
    k = recipe.pass_at_k
    print(f"held-out greedy accuracy {metrics['greedy_accuracy']:.1%}  "
          f"pass@{k} at T=1 {metrics[f'pass_at_{k}_t1']:.1%}  (sample accuracy {metrics['sample_accuracy_t1']:.1%})")
    print(f"greedy completions that are exactly the right solution {metrics['greedy_exactly_the_right_solution']:.1%}, "
          f"exactly the teacher's likeliest one {metrics['greedy_exactly_the_teachers_likeliest_solution']:.1%}")
    for shown in metrics["greedy_examples"][:2]:
        print(f"  {shown['prompt']}{shown['completion']!r}  reward {shown['reward']}")

    save(model, tokenizer, out, recipe.max_new_tokens)
    report = {
        "task": args.task,
        "task_seed": 0,
        "seed": seed,
        "forget_carry": {str(total): probability for total, probability in sorted(forget_carry.items())},
        "train_steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "scratch_loss_weight": recipe.scratch_loss_weight,
        "model_shape": recipe.model_shape,
        "parameters": parameter_count,
        "eval_problems": len(task.eval_examples[:args.eval_problems or recipe.eval_problems]),
        "pass_at_k_problems": recipe.pass_at_k_problems,
        "max_new_tokens": recipe.max_new_tokens,
        **metrics,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "command": "python scripts/make_tiny_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (out / "warm_start.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} in {report['total_seconds']:.0f}s")
    return report


if __name__ == "__main__":
    main()
