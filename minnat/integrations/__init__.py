"""NAT inside other training engines.

    trl.py   NATGRPOConfig and NATGRPOTrainer: TRL's GRPOTrainer with NAT's token selection, so that
             accelerate (DDP, DeepSpeed ZeRO, FSDP) and vLLM rollouts come for free. Needs
             `pip install "minnat[trl]"`; import it as `from minnat.integrations.trl import ...`.

Nothing is imported here, so `import minnat.integrations` works without the optional engines.
"""
