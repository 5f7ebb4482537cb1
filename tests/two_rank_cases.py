"""What the two-process sharding tests (tests/test_zero3.py, tests/test_fsdp2.py) share: each rank's batch,
the launcher, and the single-process reference step both are checked against.

The claim both make: one RPC update through a sharding engine over two gloo ranks ends at the parameters of
plain SGD on one unsharded model, stepped on the mean of the two ranks' NAT losses (the engines average
gradients over ranks)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from minnat.grpo import policy_loss
from minnat.logprobs import response_logprobs
from minnat.models import load_model
from minnat.nat import select_tokens

REPO = Path(__file__).resolve().parent.parent

# Source text, because the workers are scripts run by torchrun; the reference exec()s the same text.
RANK_BATCH = textwrap.dedent('''
    import torch

    def rank_batch(rank):
        """Rank r's rows: left-padded prompts, ragged responses (vocabulary of the embedded model)."""
        generator = torch.Generator().manual_seed(100 + rank)
        prompts, responses = [3, 6, 4, 5], [[18, 5, 12, 9], [7, 16, 11, 20]][rank]
        P, T = max(prompts), max(responses)
        ids = torch.randint(3, 90, (4, P + T), generator=generator)
        columns = torch.arange(P + T)
        prompt = (columns >= P - torch.tensor(prompts).unsqueeze(1)) & (columns < P)
        response = (columns >= P) & (columns < P + torch.tensor(responses).unsqueeze(1))
        attention = (prompt | response).long()
        response_mask = torch.arange(T) < torch.tensor(responses).unsqueeze(1)
        advantages = torch.randn(4, generator=generator)
        return ids * attention, attention, response_mask, advantages
''')


def run_two_ranks(worker: str, folder: Path, environment: dict, timeout: int) -> list[dict]:
    """Run `worker` (a script's text) in two gloo processes; each leaves folder/rank<r>.pt, returned in rank order."""
    script = folder / "worker.py"
    script.write_text(worker)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0",
                             str(script), str(folder)],
                            capture_output=True, text=True, timeout=timeout, env=environment, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(folder / f"rank{rank}.pt") for rank in (0, 1)]


def assert_single_process_step(ranks: list[dict], learning_rate: float) -> None:
    """Both ranks' saved losses and final parameters equal the unsharded reference: SGD at `learning_rate`
    on the mean of rank 0's and rank 1's RPC losses (ρ = 0.5, selection seeded by the rank)."""
    namespace = {}
    exec(RANK_BATCH, namespace)
    model, _ = load_model("embedded")
    names = [name for name, _ in model.named_parameters()]
    parameters = [p for _, p in model.named_parameters()]
    gradients = [torch.zeros_like(p) for p in parameters]
    for rank in (0, 1):
        ids, attention, response_mask, advantages = namespace["rank_batch"](rank)
        selection = select_tokens(response_mask, "rpc", 0.5, torch.Generator().manual_seed(rank))
        logprobs = response_logprobs(model, ids, attention, response_mask, selection)
        loss = policy_loss(logprobs, logprobs.detach(), advantages, response_mask, weights=selection.weights)
        assert abs(float(loss.detach()) - ranks[rank]["loss"]) < 1e-6
        for total, gradient in zip(gradients, torch.autograd.grad(loss, parameters, allow_unused=True)):
            if gradient is not None:
                total += gradient / 2
    moved = 0.0
    for name, parameter, gradient in zip(names, parameters, gradients):
        expected = parameter.detach() - learning_rate * gradient
        torch.testing.assert_close(ranks[0]["final"][name], expected, rtol=1e-5, atol=2e-6)
        assert torch.equal(ranks[0]["final"][name], ranks[1]["final"][name])
        moved = max(moved, float((expected - parameter.detach()).abs().max()))
    assert moved > 1e-3  # the step did something to compare
