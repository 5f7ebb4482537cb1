"""torchrun worker for tests/test_verl_integration.py: one NAT (RPC) step through verl's FSDP2 engine.

    python -m torch.distributed.run --nproc_per_node 2 tests/verl_two_ranks.py OUT.pt MODEL_FOLDER

(the test runs `one_step` in its own process for world size 1).

The driver's part is done on every rank identically (same batch, same seed, so the same RPC draw over
all 4 rows); rank r then keeps its rows, as verl's dispatch would give them, and runs verl's engine:
gradient (gathered from the FSDP2 shards) and one optimizer step. Rank 0 saves both.
The model folder must exist (the test saves the tiny model there first).
"""
import functools
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
from minnat.bench_verl import build_engine, init_process_group, install_cpu_platform  # noqa: E402

install_cpu_platform()
init_process_group()  # torchrun's world, or a one-process group when imported by the test
from minnat.integrations import verl as nat_verl  # noqa: E402
from minnat.nat import select_tokens  # noqa: E402
from verl_cases import actor_config, driver_batch, engine_data, engine_gradient  # noqa: E402



def one_step(folder, rank: int = 0, world: int = 1) -> dict:
    """This rank's share of the batch through the engine: the full gradient and the parameters after one step."""
    engine = build_engine(folder, learning_rate=0.1)
    batch = driver_batch([3, 5, 2, 4], [4, 2, 5, 3], seed=7)
    selection = select_tokens(batch.batch["response_mask"].bool(), "rpc", 0.5, torch.Generator().manual_seed(11),
                              cut_sampling="stratified")
    nat_verl.store_selection(batch, selection)
    rows = 4 // world
    mine = nat_verl.engine_view(batch).slice(rank * rows, (rank + 1) * rows)
    config = actor_config("seq-mean-token-mean", use_kl_loss=True, entropy_coeff=0.01)
    loss = functools.partial(nat_verl.nat_ppo_loss, config=config)

    def data():
        return engine_data(mine, global_batch_size=4, micro_batch_size=2, calculate_entropy=True)

    gradient = engine_gradient(engine, data(), loss)
    with engine.train_mode():
        engine.train_batch(data(), loss)
        parameters = torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().reshape(-1).double()
                                for p in engine.module.parameters()])
    return {"gradient": gradient, "parameters": parameters}


if __name__ == "__main__":
    out, folder = sys.argv[1], sys.argv[2]
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    result = one_step(folder, rank, world)
    if rank == 0:
        torch.save(result, out)
    torch.distributed.destroy_process_group()
