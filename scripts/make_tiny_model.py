"""
Make the embedded tiny model: a character-level Qwen3 warm-started on the
"arithmetic" task, saved in Hugging Face format to minnat/assets/tiny-qwen3/.

    python scripts/make_tiny_model.py   # about 5 minutes on 2 idle CPU cores

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
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from minnat.assets import TINY_QWEN3_DIR  # noqa: E402
from minnat.tasks import ArithmeticTask, Example, addition_solution, get_task  # noqa: E402

# -----------------------------------------------------------------------------
# settings (the defaults reproduce the committed model)

SEED = 1337
FORGET_CARRY = 0.6          # probability that the sloppy teacher drops a carry
TRAIN_STEPS = 1000
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WARMUP_STEPS = 100
WEIGHT_DECAY = 0.01
EVAL_PROBLEMS = 200         # held-out problems for greedy accuracy
PASS_AT_K_PROBLEMS = 100    # held-out problems for pass@k
PASS_AT_K = 8
MAX_NEW_TOKENS = 96         # the longest solution is 86 characters, plus <eos>

MODEL_SHAPE = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=384,
    max_position_embeddings=256,
)

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

# -----------------------------------------------------------------------------
# tokenizer


def build_tokenizer():
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
        padding_side="left", clean_up_tokenization_spaces=False,
        model_max_length=MODEL_SHAPE["max_position_embeddings"])


# -----------------------------------------------------------------------------
# model


def build_model(tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer), tie_word_embeddings=True, torch_dtype="float32",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        **MODEL_SHAPE)
    return Qwen3ForCausalLM(config)


# -----------------------------------------------------------------------------
# supervised warm start on the sloppy teacher's solutions


def sloppy_solution(example: Example, rng: random.Random, forget_carry: float) -> str:
    left, right = (int(operand) for operand in example.question.split("+"))
    return addition_solution(left, right, forget_carry=lambda: rng.random() < forget_carry)


def training_batch(task, examples, tokenizer, rng, forget_carry):
    """Right-padded prompt+solution+<eos> sequences, with labels -100 on the
    prompt and the padding so only completion tokens are learned."""
    prompts = [task.prompt_text(example) for example in examples]
    completions = [sloppy_solution(example, rng, forget_carry) for example in examples]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    sequences = [p + c + [tokenizer.eos_token_id] for p, c in zip(prompt_ids, completion_ids)]
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), length), -100)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, (sequence, prompt) in enumerate(zip(sequences, prompt_ids)):
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        labels[row, len(prompt):len(sequence)] = torch.tensor(sequence[len(prompt):])
        attention_mask[row, :len(sequence)] = 1
    return input_ids, attention_mask, labels


def train(model, tokenizer, task, *, steps, batch_size, learning_rate, forget_carry, seed, log_every=100):
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98),
                                  weight_decay=WEIGHT_DECAY)

    def learning_rate_factor(step):  # linear warmup, then cosine decay to 10%
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    model.train()
    start, running_loss = time.time(), 0.0
    for step in range(steps):
        examples = rng.sample(task.train_examples, batch_size)
        input_ids, attention_mask, labels = training_batch(task, examples, tokenizer, rng, forget_carry)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running_loss += loss.item()
        if (step + 1) % log_every == 0:
            print(f"step {step + 1:5d}/{steps}  loss {running_loss / log_every:.4f}  "
                  f"lr {scheduler.get_last_lr()[0]:.2e}  {time.time() - start:.0f}s", flush=True)
            running_loss = 0.0
    model.eval()


# -----------------------------------------------------------------------------
# evaluation with transformers' generate


@torch.no_grad()
def generate_completions(model, tokenizer, task, examples, *, do_sample, num_return_sequences=1,
                         batch_size=200):
    completions = []
    for first in range(0, len(examples), batch_size):
        prompts = [task.prompt_text(example) for example in examples[first:first + batch_size]]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(
            **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=do_sample,
            temperature=1.0 if do_sample else None, top_p=1.0 if do_sample else None, top_k=0 if do_sample else None,
            num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        completions += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return completions


def evaluate(model, tokenizer, task, *, seed):
    """Greedy accuracy on EVAL_PROBLEMS held-out problems and pass@k at
    temperature 1 on the first PASS_AT_K_PROBLEMS of them, plus a diagnosis:
    how often the greedy completion is the right solution or the sloppy
    teacher's all-carries-forgotten one, character for character."""
    examples = task.eval_examples[:EVAL_PROBLEMS]
    greedy = generate_completions(model, tokenizer, task, examples, do_sample=False)
    greedy_accuracy = sum(task.reward(c, e) for c, e in zip(greedy, examples)) / len(examples)
    all_forgotten = [addition_solution(*map(int, e.question.split("+")), forget_carry=lambda: True)
                     for e in examples]
    exact_right = sum(c == e.solution for c, e in zip(greedy, examples)) / len(examples)
    exact_forgot = sum(c == f for c, f in zip(greedy, all_forgotten)) / len(examples)

    torch.manual_seed(seed)
    pass_examples = examples[:PASS_AT_K_PROBLEMS]
    samples = generate_completions(model, tokenizer, task, pass_examples, do_sample=True,
                                   num_return_sequences=PASS_AT_K, batch_size=50)
    rewards = torch.tensor([task.reward(c, pass_examples[i // PASS_AT_K]) for i, c in enumerate(samples)])
    rewards = rewards.view(len(pass_examples), PASS_AT_K)
    return {
        "greedy_accuracy": greedy_accuracy,
        "greedy_exactly_the_right_solution": exact_right,
        "greedy_exactly_the_all_carries_forgotten_solution": exact_forgot,
        "sample_accuracy_t1": rewards.mean().item(),
        f"pass_at_{PASS_AT_K}_t1": (rewards.max(dim=1).values).mean().item(),
        "greedy_examples": [{"prompt": task.prompt_text(e), "completion": c, "reward": task.reward(c, e)}
                            for e, c in list(zip(examples, greedy))[:5]],
    }


# -----------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(TINY_QWEN3_DIR), help="folder to write the model into")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--steps", type=int, default=TRAIN_STEPS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--forget-carry", type=float, default=FORGET_CARRY)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not 0.0 <= args.forget_carry <= 1.0:
        raise ValueError(f"--forget-carry is a probability, so it must be between 0 and 1; got {args.forget_carry}.")

    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = get_task("arithmetic", seed=0)  # the task's own default splits, as the RL run will see them
    assert isinstance(task, ArithmeticTask)

    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    parameter_count = sum(p.numel() for p in model.parameters())
    print(f"tiny Qwen3: {parameter_count:,} parameters, vocabulary {len(tokenizer)}")

    train(model, tokenizer, task, steps=args.steps, batch_size=args.batch_size,
          learning_rate=args.learning_rate, forget_carry=args.forget_carry, seed=args.seed)
    train_seconds = time.time() - started

    metrics = evaluate(model, tokenizer, task, seed=args.seed)
    print(f"held-out greedy accuracy {metrics['greedy_accuracy']:.1%}  "
          f"pass@{PASS_AT_K} at T=1 {metrics[f'pass_at_{PASS_AT_K}_t1']:.1%}  "
          f"(sample accuracy {metrics['sample_accuracy_t1']:.1%})")
    print(f"greedy completions that are exactly the right solution {metrics['greedy_exactly_the_right_solution']:.1%}, "
          f"exactly the all-carries-forgotten one {metrics['greedy_exactly_the_all_carries_forgotten_solution']:.1%}")
    for shown in metrics["greedy_examples"]:
        print(f"  {shown['prompt']}{shown['completion']}  reward {shown['reward']}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.max_new_tokens = MAX_NEW_TOKENS
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # name the classic tokenizer class so transformers 4.x loads it too (5.x maps it to its backend)
    config_path = out / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")

    report = {
        "task": "arithmetic",
        "task_seed": 0,
        "seed": args.seed,
        "forget_carry": args.forget_carry,
        "train_steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "parameters": parameter_count,
        "eval_problems": EVAL_PROBLEMS,
        "pass_at_k_problems": PASS_AT_K_PROBLEMS,
        "max_new_tokens": MAX_NEW_TOKENS,
        **metrics,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "torch_version": torch.__version__,
    }
    (out / "warm_start.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} in {report['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
