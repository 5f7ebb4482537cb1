"""minnat — a literate reference implementation of NAT (Not All Tokens Are Needed).

Read the modules in this order:

    nat.py          which response tokens to train on, and their weights 1/π_t (Horvitz–Thompson);
                    also the biased contrasts that show why the weights matter
    grpo.py         the GRPO loss; NAT enters it only through those weights
    logprobs.py     log π_θ at the kept tokens only, with RPC's exact truncation and a tiled LM head
    entropy.py      per-token entropies of the policy (for the top-entropy contrast)
    tasks.py        verifiable tasks and rewards (embedded long-addition and arithmetic, GSM8K)
    models.py       loading the embedded tiny Qwen3s, real Qwen3 ids, size presets, CPU threads
    lora.py         LoRA adapters (peft, optional): the base as the KL's reference, adapter checkpoints
    rollout.py      sampling G responses per prompt
    train.py        the GRPO + NAT trainer (`python -m minnat.train`)
    bench.py        what NAT saves (`python -m minnat.bench`; bench_memory.py for --mode memory,
                    bench_lora.py for --mode lora, bench_common.py what they share)
    diagnostics.py  gradient agreement, bias and weight statistics (used by the explorer and tutorials)
    explorer/       the Gradio explorer, one module per view (`python app.py`)
    integrations/   NAT inside other trainers: trl.py (NATGRPOTrainer)
"""
__version__ = "0.1.0"
