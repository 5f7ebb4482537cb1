"""minnat — a literate reference implementation of NAT (Not All Tokens Are Needed).

Read the modules in this order:

    nat.py        which response tokens to train on, and their weights 1/π_t (Horvitz–Thompson)
    grpo.py       the GRPO loss; NAT enters it only through those weights
    logprobs.py   log π_θ at the kept tokens only, with RPC's exact truncation
    tasks.py      verifiable tasks and rewards (embedded arithmetic, GSM8K)
    models.py     loading the embedded tiny Qwen3, real Qwen3 ids, and size presets
    rollout.py    sampling G responses per prompt
    train.py      the GRPO + NAT trainer (`python -m minnat.train`)
    bench.py      what NAT saves (`python -m minnat.bench`)
    diagnostics.py  gradient agreement and weight statistics (used by the app and tutorials)
"""
__version__ = "0.1.0"
