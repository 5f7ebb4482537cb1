#!/usr/bin/env bash
# GRPO on GSM8K for Qwen3-8B with NAT (RPC, rho = 0.5) inside verl 0.9: FSDP2 actor, vLLM rollouts, one node of 8 GPUs.
# NOT RUN: written for GPUs and checked only on CPU (every key below composes against verl 0.9.1's config,
# tests/test_verl_integration.py). Prepare the data with verl's own script first:
#   python -m verl.examples.data_preprocess.gsm8k --local_save_dir ~/data/gsm8k   (or examples/data_preprocess/gsm8k.py)
# Usage: bash examples/verl/grpo_qwen3_nat.sh [more hydra overrides], e.g. nat.method=full for the stock baseline.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-8B}
DATA=${DATA:-$HOME/data/gsm8k}

python -m minnat.integrations.verl \
    nat.method=rpc \
    nat.rho=0.5 \
    nat.cut_sampling=stratified \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=false \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/test.parquet" \
    data.train_batch_size=256 \
    data.max_prompt_length=512 \
    data.max_response_length=2048 \
    data.filter_overlong_prompts=true \
    data.truncation=error \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.use_remove_padding=true \
    actor_rollout_ref.model.enable_gradient_checkpointing=true \
    actor_rollout_ref.actor.strategy=fsdp2 \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.use_dynamic_bsz=true \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.use_kl_loss=true \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.fsdp_config.param_offload=false \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=false \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true \
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=32768 \
    actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true \
    actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=32768 \
    actor_rollout_ref.ref.fsdp_config.param_offload=true \
    trainer.use_v1=false \
    trainer.critic_warmup=0 \
    trainer.logger='["console"]' \
    trainer.project_name=minnat_verl \
    trainer.experiment_name=qwen3_8b_gsm8k_nat_rpc_0.5 \
    trainer.n_gpus_per_node=8 \
    trainer.nnodes=1 \
    trainer.save_freq=20 \
    trainer.test_freq=5 \
    trainer.total_epochs=15 \
    "$@"
