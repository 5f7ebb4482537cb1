"""NAT under DeepSpeed ZeRO-3, for real: two CPU processes (gloo), weights partitioned across them.

ZeRO-3 keeps every parameter as an empty placeholder outside the forward of the module that owns
it, so minnat's LM head must be *called* (`minnat.logprobs.score_positions_through_module`)
rather than read. `stage3_param_persistence_threshold: 0` partitions even the tiny model's
small matrices (by default DeepSpeed keeps parameters under 10⁵ elements whole, which would
hide the case). Two tests:

1. exactness: one RPC update of a ZeRO-3 engine over two ranks (each its own rows and its own
   draw) ends at exactly the parameters of a plain single-process SGD step on the mean of the
   two ranks' losses;
2. TRL: `NATGRPOTrainer` trains two steps under ZeRO-3 through TRL's own DeepSpeed path, with
   the head partitioned and scored through the module path.
"""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import torch

try:
    import deepspeed  # noqa: F401
except ImportError as error:  # a test dependency: fail, never skip
    raise ImportError('the ZeRO-3 tests need DeepSpeed: `pip install -e ".[test,trl,deepspeed]"` '
                      "(scripts/install_test_deps.sh installs it)") from error


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import two_rank_cases  # noqa: E402
from two_rank_cases import RANK_BATCH  # noqa: E402

ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}
LEARNING_RATE = 0.5

COMMON = RANK_BATCH

ZERO3_WORKER = COMMON + textwrap.dedent('''
    import os, sys
    import deepspeed
    from minnat.grpo import policy_loss
    from minnat.logprobs import response_logprobs
    from minnat.models import load_model
    from minnat.nat import select_tokens

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    model, _ = load_model("embedded")
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=%r),
                                      config=config)
    inner = engine.module
    head_numel_outside_forward = inner.get_output_embeddings().weight.numel()
    ids, attention, response_mask, advantages = rank_batch(rank)
    selection = select_tokens(response_mask, "rpc", 0.5, torch.Generator().manual_seed(rank))
    # Through the engine, as NATGRPOTrainer does: its forward (ZeRO-3's gathering hooks) runs our log-probs.
    inner.forward = lambda input_ids, attention_mask: response_logprobs(inner, input_ids, attention_mask,
                                                                        response_mask, selection)
    logprobs = engine(input_ids=ids, attention_mask=attention)
    del inner.forward
    loss = policy_loss(logprobs, logprobs.detach(), advantages, response_mask, weights=selection.weights)
    engine.backward(loss)
    engine.step()
    parameters = list(inner.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in parameters]):
        final = {name: p.detach().clone() for name, p in parameters}
    torch.save({"final": final, "head_numel": head_numel_outside_forward, "loss": float(loss)},
               f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()
''' % LEARNING_RATE)


def run_two_ranks(worker: str, folder: Path) -> list[dict]:
    return two_rank_cases.run_two_ranks(worker, folder, ENVIRONMENT, timeout=400)


def test_one_rpc_update_under_zero3_equals_the_single_process_step(tmp_path):
    ranks = run_two_ranks(ZERO3_WORKER, tmp_path)
    assert ranks[0]["head_numel"] == 0  # the head's weight really was partitioned outside its forward

    # The reference: both ranks' losses on one unsharded model; DeepSpeed averages gradients over ranks.
    two_rank_cases.assert_single_process_step(ranks, LEARNING_RATE)


TRL_WORKER = textwrap.dedent('''
    import sys, torch
    import deepspeed
    import minnat.logprobs
    from minnat.integrations.trl import NATGRPOConfig, NATGRPOTrainer, task_dataset, task_reward
    from minnat.models import load_model
    from minnat.tasks import get_task

    out = sys.argv[1]
    model, tokenizer = load_model("embedded")
    initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    task = get_task("arithmetic", num_train=64, num_eval=4)
    zero3 = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
             "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
             "zero_allow_untested_optimizer": True, "bf16": {"enabled": False}}
    args = NATGRPOConfig(output_dir=f"{out}/trainer", use_cpu=True, bf16=False, nat_method="rpc", max_steps=2,
                         per_device_train_batch_size=16, num_generations=8, temperature=1.5,
                         max_completion_length=64, learning_rate=1e-3, save_strategy="no", report_to="none",
                         logging_steps=1, disable_tqdm=True, deepspeed=zero3)
    correct = task_reward(task)
    def reward(completions, **columns):  # + a length term, so that no group has all-equal rewards
        return [r + len(c) / 1000 for r, c in zip(correct(completions, **columns), completions)]
    trainer = NATGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=task_dataset(task),
                             processing_class=tokenizer)
    module_calls, zero3_heads = [0], []
    through_module = minnat.logprobs.score_positions_through_module
    def counting(head, *arguments, **options):
        module_calls[0] += 1
        zero3_heads.append(hasattr(head.weight, "ds_id"))  # a ZeRO-3 parameter: chosen by head_weight_is_sharded
        return through_module(head, *arguments, **options)
    minnat.logprobs.score_positions_through_module = counting
    trainer.train()
    inner = trainer.accelerator.unwrap_model(trainer.model)
    head_numel = inner.get_output_embeddings().weight.numel()  # outside any forward: the empty placeholder
    parameters = list(inner.parameters())
    with deepspeed.zero.GatheredParameters(parameters):
        final = torch.cat([p.detach().flatten().clone() for p in parameters])
    logged = [entry for entry in trainer.state.log_history if "nat/kept_fraction" in entry]
    torch.save({"initial": initial, "final": final, "module_calls": module_calls[0], "zero3_heads": zero3_heads,
                "head_numel": head_numel,
                "deepspeed": trainer.is_deepspeed_enabled, "logged": logged},
               f"{out}/rank{trainer.accelerator.process_index}.pt")
''')


def test_nat_grpo_trainer_trains_under_zero3_with_the_head_partitioned(tmp_path):
    ranks = run_two_ranks(TRL_WORKER, tmp_path)
    for rank in ranks:
        assert rank["deepspeed"] and rank["module_calls"] > 0
        assert all(rank["zero3_heads"]) and rank["head_numel"] == 0  # the head really was partitioned
        assert len(rank["logged"]) == 2 and all(0.3 < entry["nat/kept_fraction"] < 0.7 for entry in rank["logged"])
    assert (ranks[0]["final"] - ranks[0]["initial"]).abs().max() > 0  # training moved the weights
    assert torch.equal(ranks[0]["final"], ranks[1]["final"])  # one set of (sharded) weights, gathered alike
