"""NAT under PyTorch FSDP2 (`fully_shard`), for real: two CPU processes (gloo), weights sharded across them.

FSDP2 keeps every parameter as a sharded DTensor outside the forward of the module that owns it; each
decoder layer gathers its own weights as it runs, and the root module (embeddings, final norm, the tied LM
head) gathers its weights in the pre-forward hook of `model(...)`. minnat's log-prob path runs *inside* that
call (the model's forward is swapped for it, as `NATGRPOTrainer.nat_logprobs` does), so it sees whole
weights, and FSDP2's backward hooks reduce-scatter the gradients as usual. Two tests:

1. exactness: one RPC update of a model sharded over two ranks (each its own rows and its own draw) ends
   at exactly the parameters of a plain single-process SGD step on the mean of the two ranks' losses;
2. TRL: `NATGRPOTrainer` trains two steps under accelerate's FSDP2 preparation (through
   `tests/fsdp_on_cpu.py`, since accelerate enables FSDP only on GPU-like devices), NAT active on both
   ranks, and the gathered weights are equal across ranks afterwards.
"""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import two_rank_cases  # noqa: E402
from two_rank_cases import RANK_BATCH  # noqa: E402

ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
LEARNING_RATE = 0.5

COMMON = RANK_BATCH

FSDP2_WORKER = COMMON + textwrap.dedent('''
    import sys
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from minnat.grpo import policy_loss
    from minnat.logprobs import response_logprobs
    from minnat.models import load_model
    from minnat.nat import select_tokens

    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    model, _ = load_model("embedded")
    for layer in model.get_decoder().layers:  # as accelerate's TRANSFORMER_BASED_WRAP does
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    head_sharded = type(model.get_output_embeddings().weight).__name__ == "DTensor"
    optimizer = torch.optim.SGD(model.parameters(), lr=%r)
    ids, attention, response_mask, advantages = rank_batch(rank)
    selection = select_tokens(response_mask, "rpc", 0.5, torch.Generator().manual_seed(rank))
    # Through the root's call, as NATGRPOTrainer does: its pre-forward hook gathers the root's weights.
    model.forward = lambda input_ids, attention_mask: response_logprobs(model, input_ids, attention_mask,
                                                                        response_mask, selection)
    logprobs = model(input_ids=ids, attention_mask=attention)
    del model.forward
    loss = policy_loss(logprobs, logprobs.detach(), advantages, response_mask, weights=selection.weights)
    loss.backward()
    optimizer.step()
    final = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
    torch.save({"final": final, "head_sharded": head_sharded, "loss": float(loss.detach())}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
''' % LEARNING_RATE)


def run_two_ranks(worker: str, folder: Path) -> list[dict]:
    return two_rank_cases.run_two_ranks(worker, folder, ENVIRONMENT, timeout=300)


def test_one_rpc_update_under_fsdp2_equals_the_single_process_step(tmp_path):
    ranks = run_two_ranks(FSDP2_WORKER, tmp_path)
    assert ranks[0]["head_sharded"]  # the head's weight really was a sharded DTensor outside the forward

    two_rank_cases.assert_single_process_step(ranks, LEARNING_RATE)


TRL_WORKER = textwrap.dedent('''
    import sys, torch
    import fsdp_on_cpu
    fsdp_on_cpu.enable()  # accelerate's FSDP on this CPU machine (see tests/fsdp_on_cpu.py)
    from minnat.integrations.trl import NATGRPOConfig, NATGRPOTrainer, task_dataset, task_reward
    from minnat.models import load_model
    from minnat.tasks import get_task

    out = sys.argv[1]
    model, tokenizer = load_model("embedded")
    initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    task = get_task("arithmetic", num_train=64, num_eval=4)
    args = NATGRPOConfig(output_dir=f"{out}/trainer", use_cpu=True, bf16=False, nat_method="rpc", max_steps=2,
                         per_device_train_batch_size=8, num_generations=4, temperature=1.5,
                         max_completion_length=32, learning_rate=1e-2, save_strategy="no", report_to="none",
                         logging_steps=1, disable_tqdm=True, gradient_checkpointing=False, fsdp=True,
                         fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["Qwen3DecoderLayer"]})
    correct = task_reward(task)
    def reward(completions, **columns):  # + a content term, so that no group has all-equal rewards
        return [r + c.count("1") / 10 for r, c in zip(correct(completions, **columns), completions)]
    trainer = NATGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=task_dataset(task),
                             processing_class=tokenizer)
    trainer.train()
    parameters = list(trainer.model.parameters())
    final = torch.cat([p.full_tensor().detach().flatten() for p in parameters])
    logged = [entry for entry in trainer.state.log_history if "nat/kept_fraction" in entry]
    torch.save({"initial": initial, "final": final, "logged": logged, "nat_losses": trainer.nat_loss_calls,
                "fsdp2": trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2,
                "sharded": all(type(p).__name__ == "DTensor" for p in parameters)},
               f"{out}/rank{trainer.accelerator.process_index}.pt")
''')


def test_nat_grpo_trainer_trains_under_fsdp2(tmp_path):
    ranks = run_two_ranks(TRL_WORKER, tmp_path)
    for rank in ranks:
        assert rank["fsdp2"] and rank["sharded"] and rank["nat_losses"] == 2
        assert len(rank["logged"]) == 2 and all(0.2 < entry["nat/kept_fraction"] < 0.8 for entry in rank["logged"])
        assert any(entry["grad_norm"] > 0 for entry in rank["logged"])  # a real gradient, not all-equal rewards
    assert (ranks[0]["final"] - ranks[0]["initial"]).abs().max() > 0  # training moved the weights
    assert torch.equal(ranks[0]["final"], ranks[1]["final"])  # one set of sharded weights, gathered alike
