"""Rollouts: sample G responses per prompt and score them.

GRPO's data is a batch of groups. For each question q we sample G responses
o_1..o_G ~ π_old(· | q) with Hugging Face `generate`, decode them, and ask the task's
reward function for R_i. The batch keeps `generate`'s layout, which is what
`minnat.logprobs.response_logprobs` expects:

    input_ids [B, P + T]   left-padded prompts (P columns), then right-padded responses (T columns)
    response_mask [B, T]   True on o_{i,1..|o_i|}: every generated token up to and including EOS

B = (number of questions) × G, and the G responses of a question are consecutive rows, as
`minnat.grpo.group_advantages` expects. A response that hit `max_new_tokens` without EOS is
*truncated*; `mask_truncated` removes such rows from the loss (their reward judges an
unfinished answer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minnat.tasks import Example, Task


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor        # long [B, P + T]
    attention_mask: torch.Tensor   # long [B, P + T]
    response_mask: torch.Tensor    # bool [B, T]
    rewards: torch.Tensor          # float [B]
    truncated: torch.Tensor        # bool [B]: no EOS within max_new_tokens
    completions: list              # decoded responses (without EOS), B strings
    examples: list                 # the Example of each row, B entries
    group_size: int

    @property
    def prompt_columns(self) -> int:
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    def rows(self, keep: torch.Tensor) -> "RolloutBatch":
        """The sub-batch of the rows where `keep` (bool [B]) is True."""
        indices = keep.nonzero().flatten().tolist()
        return RolloutBatch(self.input_ids[keep], self.attention_mask[keep], self.response_mask[keep],
                            self.rewards[keep], self.truncated[keep], [self.completions[i] for i in indices],
                            [self.examples[i] for i in indices], self.group_size)


def prompt_strings(task: Task, tokenizer, examples: list[Example]) -> list[str]:
    """The text each prompt starts with: the task's prompt, in the chat template when the task and tokenizer use one."""
    texts = [task.prompt_text(example) for example in examples]
    if task.uses_chat_template and getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True, enable_thinking=False)
                 for text in texts]
    return texts


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the generation config's EOS (may be a list) and the tokenizer's."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the tokenizer and model define no EOS token, so responses could never end; set "
                         "tokenizer.eos_token (and generation_config.eos_token_id).")
    return ids


def response_mask_from_tokens(responses: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(response_mask [B, T], truncated [B]): tokens up to and including the first EOS."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))
    columns = torch.arange(responses.shape[1], device=responses.device)
    first_eos = torch.where(is_eos, columns, torch.full_like(columns, responses.shape[1])).amin(dim=1) \
        if responses.shape[1] else torch.zeros(responses.shape[0], dtype=torch.long, device=responses.device)
    truncated = first_eos >= responses.shape[1]
    lengths = torch.where(truncated, torch.full_like(first_eos, responses.shape[1]), first_eos + 1)
    return columns.unsqueeze(0) < lengths.unsqueeze(1), truncated


def score(task: Task, completions: list[str], examples: list[Example]) -> torch.Tensor:
    """R_i for each completion; a reward function that raises or returns a non-number is a clear error."""
    rewards = []
    for completion, example in zip(completions, examples):
        try:
            reward = float(task.reward(completion, example))
        except Exception as error:  # noqa: BLE001 — re-raised with the context a user needs
            raise ValueError(f"the reward function of task {task.name!r} raised {error!r} on the completion "
                             f"{completion[:80]!r}. A reward function must return a finite number for any text "
                             "(return 0.0 for answers it cannot parse).") from error
        if reward != reward or reward in (float("inf"), float("-inf")):
            raise ValueError(f"the reward function of task {task.name!r} returned {reward} for the completion "
                             f"{completion[:80]!r}; rewards must be finite numbers.")
        rewards.append(reward)
    return torch.tensor(rewards, dtype=torch.float32)


@torch.no_grad()
def generate(model, tokenizer, task: Task, examples: list[Example], *, group_size: int = 1,
             max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
             greedy: bool = False) -> RolloutBatch:
    """Sample `group_size` responses for each example (consecutive rows) and score them."""
    if not examples:
        raise ValueError("no prompts to generate from; the task's example list is empty.")
    device = next(model.parameters()).device
    texts = [text for text in prompt_strings(task, tokenizer, examples) for _ in range(group_size)]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False).to(device)
    was_training = model.training
    model.eval()
    # top_k=0 switches off the generation config's default top-k, so that samples come from exactly
    # softmax(logits / temperature) — the distribution whose log-probs the loss uses.
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    eos_ids = eos_token_ids(model, tokenizer)
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=not greedy,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, use_cache=True, **sampling)
    model.train(was_training)
    prompt_columns = encoded["input_ids"].shape[1]
    responses = output[:, prompt_columns:]
    response_mask, truncated = response_mask_from_tokens(responses, eos_ids)
    # Everything after EOS is padding: normalise it to the pad id so the batch is self-describing.
    responses = torch.where(response_mask, responses, torch.full_like(responses, tokenizer.pad_token_id))
    input_ids = torch.cat([encoded["input_ids"], responses], dim=1)
    attention_mask = torch.cat([encoded["attention_mask"], response_mask.long()], dim=1)
    completions = tokenizer.batch_decode([row[:int(mask.sum())] for row, mask in zip(responses, response_mask)],
                                         skip_special_tokens=True)
    row_examples = [example for example in examples for _ in range(group_size)]
    return RolloutBatch(input_ids, attention_mask, response_mask, score(task, completions, row_examples),
                        truncated.cpu(), completions, row_examples, group_size)
