"""NAT inside other training engines.

    trl.py   NATGRPOConfig and NATGRPOTrainer: TRL's GRPOTrainer with NAT's token selection, so that
             accelerate (DDP, DeepSpeed ZeRO, FSDP) and vLLM rollouts come for free. Needs
             `pip install "minnat[trl]"`; import it as `from minnat.integrations.trl import ...`.

    verl.py  NATRayPPOTrainer and nat_ppo_loss: verl 0.9's RayPPOTrainer with NAT's token selection
             (FSDP2 workers, vLLM/SGLang rollouts), and the launcher `python -m minnat.integrations.verl`.
             Needs `pip install "minnat[verl]"`.

Nothing is imported here, so `import minnat.integrations` works without the optional engines.
"""
