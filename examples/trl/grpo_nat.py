"""GRPO with NAT through TRL's GRPOTrainer: one script from a laptop CPU to many GPUs.

    python examples/trl/grpo_nat.py                       # embedded tiny Qwen3, long addition, RPC ρ = 0.5, CPU
    python examples/trl/grpo_nat.py --task arithmetic     # the short-answer task (~67 tokens): a quicker run
    python examples/trl/grpo_nat.py --method full         # TRL's GRPO on every token, everything else identical

    # several GPUs (accelerate picks DDP / DeepSpeed ZeRO-2 / ZeRO-3 / FSDP2 from the config file):
    accelerate launch --config_file examples/trl/accelerate/ddp.yaml examples/trl/grpo_nat.py \\
        --model Qwen/Qwen3-0.6B --task gsm8k --bf16 --gradient-checkpointing --learning-rate 1e-6 --steps 200
    # ... and vLLM rollouts on the training GPUs (pip install vllm):
    accelerate launch --config_file examples/trl/accelerate/zero2.yaml examples/trl/grpo_nat.py \\
        --model Qwen/Qwen3-0.6B --task gsm8k --bf16 --gradient-checkpointing --vllm colocate

The model, task and reward are minnat's (`minnat.models.load_model`, `minnat.tasks`); the
trainer is TRL's, with NAT's selection (`minnat.integrations.trl.NATGRPOTrainer`). Each step
samples `--prompts-per-step` prompts × `--group-size` responses per process and makes one
optimizer step (× `--num-iterations` μ). The log lines are TRL's (reward, kl, clip ratios)
plus `nat/kept_fraction`, `nat/max_ht_weight` and `nat/tokens_to_model`.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from minnat.integrations.trl import NATGRPOConfig, NATGRPOTrainer, task_dataset, task_reward
from minnat.models import load_model
from minnat.nat import CUT_SAMPLINGS, METHODS, RPC_CUT_DISTRIBUTIONS
from minnat.tasks import get_task


# Per-task defaults. long-addition: `python -m minnat.train`'s own (30 steps × 128 responses, peak learning
# rate 1.5e-4 after 3 warmup steps, then linear decay; TRL's "grpo" loss is minnat's seq-mean-token-mean);
# its longest worked answer is 413 tokens with EOS. arithmetic: the quick short-answer run.
TASK_DEFAULTS = {
    "long-addition": dict(max_new_tokens=420, steps=30, prompts_per_step=16, learning_rate=1.5e-4, warmup_steps=3,
                          loss_type="grpo"),
    "arithmetic": dict(max_new_tokens=96, steps=20, prompts_per_step=8, learning_rate=1e-4, warmup_steps=0,
                       loss_type="dapo"),
    "gsm8k": dict(max_new_tokens=512, steps=20, prompts_per_step=8, learning_rate=1e-6, warmup_steps=0,
                  loss_type="dapo"),
}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="embedded", help="'embedded', a local folder, or a hub id")
    parser.add_argument("--task", default="long-addition", choices=["long-addition", "arithmetic", "gsm8k"],
                        help="the embedded long-addition (~250-token answers) or arithmetic task, or GSM8K")
    parser.add_argument("--data-path", default=None, help="GSM8K JSONL file or folder (offline)")
    parser.add_argument("--method", default="rpc", choices=METHODS)
    parser.add_argument("--budget", type=float, default=0.5, help="ρ, the expected fraction of tokens kept")
    parser.add_argument("--cut-distribution", default="uniform-floor", choices=RPC_CUT_DISTRIBUTIONS)
    parser.add_argument("--cut-sampling", default="stratified", choices=CUT_SAMPLINGS,
                        help="RPC cuts stratified across each generation batch, or independent per response")
    parser.add_argument("--loss-type", default=None,
                        help="TRL's loss_type (grpo, bnpo, dr_grpo, dapo, ...); default per task (TASK_DEFAULTS)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (one generation batch each); default per task")
    parser.add_argument("--prompts-per-step", type=int, default=None,
                        help="prompts per process per step; default per task")
    parser.add_argument("--group-size", type=int, default=8, help="G, responses per prompt")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1,
                        help="split each step's responses into this many backward passes (less memory)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="completion limit; default: 420 for long-addition, 96 for arithmetic, 512 for gsm8k")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak learning rate; default per task")
    parser.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps; default per task")
    parser.add_argument("--beta", type=float, default=0.0, help="k3 KL coefficient (loads a reference model)")
    parser.add_argument("--num-iterations", type=int, default=1, help="μ, updates per generation batch")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 weights and autocast (GPUs); on whenever accelerate's config says mixed_precision: "
                             "bf16, which DeepSpeed's configs require to match")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--vllm", choices=["colocate", "server"], default=None,
                        help="generate with vLLM: 'colocate' shares the training GPUs, 'server' uses `trl vllm-serve`")
    parser.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/trl-nat", help="output folder (TRL's output_dir)")
    parser.add_argument("--save", action="store_true", help="save the trained model at the end")
    arguments = parser.parse_args(argv)
    for name, value in TASK_DEFAULTS[arguments.task].items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    # `accelerate launch` passes its config's mixed_precision in the environment; follow it, so that the
    # shipped configs (mixed_precision: bf16) work with or without --bf16 (override: --mixed_precision no).
    arguments.bf16 = arguments.bf16 or os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16"
    return arguments


def config_from(arguments: argparse.Namespace) -> NATGRPOConfig:
    on_gpu = torch.cuda.is_available()
    responses = arguments.prompts_per_step * arguments.group_size
    if responses % arguments.gradient_accumulation_steps:
        raise SystemExit(f"--prompts-per-step × --group-size = {responses} responses must split evenly into "
                         f"--gradient-accumulation-steps {arguments.gradient_accumulation_steps}.")
    vllm = {}
    if arguments.vllm:
        # vLLM samples from a slightly different numerical policy; TRL corrects it per token, which
        # NAT supports at every kept token (the sequence-level modes need every token's old log-prob).
        vllm = dict(use_vllm=True, vllm_mode=arguments.vllm, vllm_importance_sampling_mode="token_truncate",
                    vllm_gpu_memory_utilization=arguments.vllm_gpu_memory_utilization)
    return NATGRPOConfig(
        output_dir=arguments.out, seed=arguments.seed, use_cpu=not on_gpu, bf16=arguments.bf16,
        nat_method=arguments.method, nat_budget=arguments.budget, nat_cut_distribution=arguments.cut_distribution,
        nat_cut_sampling=arguments.cut_sampling,
        loss_type=arguments.loss_type, beta=arguments.beta, num_iterations=arguments.num_iterations,
        max_steps=arguments.steps, learning_rate=arguments.learning_rate, warmup_steps=arguments.warmup_steps,
        lr_scheduler_type="linear",
        per_device_train_batch_size=responses // arguments.gradient_accumulation_steps,
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
        num_generations=arguments.group_size, max_completion_length=arguments.max_new_tokens,
        temperature=arguments.temperature, top_k=0, gradient_checkpointing=arguments.gradient_checkpointing,
        logging_steps=1, save_strategy="no", report_to="none", **vllm)


def main(argv=None) -> dict:
    arguments = parse_arguments(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(arguments.model, device=device, task=arguments.task,
                                  dtype="bfloat16" if arguments.bf16 else "float32")
    task = get_task(arguments.task, data_path=arguments.data_path, seed=arguments.seed)
    trainer = NATGRPOTrainer(model=model, reward_funcs=task_reward(task), args=config_from(arguments),
                             train_dataset=task_dataset(task), processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "reward" in entry]
    summary = {"method": arguments.method, "budget": arguments.budget, "steps": len(steps),
               "reward_first_step": steps[0]["reward"] if steps else None,
               "reward_last_step": steps[-1]["reward"] if steps else None,
               "mean_kept_fraction": sum(s.get("nat/kept_fraction", 0.0) for s in steps) / max(len(steps), 1),
               "wall_seconds": round(time.perf_counter() - start, 1),
               "distributed": trainer.accelerator.distributed_type.value, "processes": trainer.accelerator.num_processes,
               "fsdp2": bool(trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2)}
    if trainer.accelerator.is_main_process:
        Path(arguments.out).mkdir(parents=True, exist_ok=True)
        (Path(arguments.out) / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
    if arguments.save:
        trainer.save_model(arguments.out)
    return summary


if __name__ == "__main__":
    main()
