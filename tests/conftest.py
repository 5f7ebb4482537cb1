"""Shared test fixtures: tiny random Qwen3 models and generate()-shaped batches, built locally (no network)."""
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


def build_tiny_qwen3(vocab_size: int = 64, dtype=torch.float64, seed: int = 0, layers: int = 2):
    """A 2-layer Qwen3ForCausalLM with random weights; float64 by default so exactness checks are tight."""
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                         tie_word_embeddings=False)
    return Qwen3ForCausalLM(config).to(dtype).eval()


def make_batch(prompt_lengths, response_lengths, prompt_columns=None, response_columns=None,
               vocab_size: int = 64, seed: int = 0):
    """input_ids [B, P+T] (left-padded prompts, right-padded responses), attention_mask, response_mask."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths, response_lengths = torch.tensor(prompt_lengths), torch.tensor(response_lengths)
    P = prompt_columns or int(prompt_lengths.max())
    T = response_columns or max(int(response_lengths.max()), 1)
    batch = len(prompt_lengths)
    input_ids = torch.randint(1, vocab_size, (batch, P + T), generator=generator)
    columns = torch.arange(P + T)
    prompt_part = (columns.unsqueeze(0) >= P - prompt_lengths.unsqueeze(1)) & (columns.unsqueeze(0) < P)
    response_part = (columns.unsqueeze(0) >= P) & (columns.unsqueeze(0) < P + response_lengths.unsqueeze(1))
    attention_mask = (prompt_part | response_part).long()
    input_ids = input_ids * attention_mask  # pad id 0
    response_mask = torch.arange(T).unsqueeze(0) < response_lengths.unsqueeze(1)
    return input_ids, attention_mask, response_mask


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_qwen3()


CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_local_chat_model(folder, texts, seed: int = 0):
    """A tiny Qwen3 with a byte-level BPE tokenizer trained on `texts` and a chat template, saved
    with save_pretrained to `folder` — a stand-in for Qwen/Qwen3-0.6B that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer_model = Tokenizer(models.BPE())
    tokenizer_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer_model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer_model.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_model, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    model = build_tiny_qwen3(vocab_size=len(tokenizer), dtype=torch.float32, seed=seed)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------- two workers (pytest-xdist)
# pyproject runs the suite as `-n 2 --dist loadgroup`: two worker processes on the two cores, since
# most tests use one thread. Three rules keep that safe and short:
#   * tests that start two ranks of their own share one group, so two 2-process jobs never
#     contend for 2 cores at once;
#   * the explorer's tests share one worker: they count the app's temporary folders machine-wide;
#   * the longest tests go first, so the suite does not end on one worker's long tail.
TWO_RANKS = ("test_accelerate_launch.py::", "test_fsdp2.py::", "test_zero3.py::",
             "test_trl_integration.py::test_two_process_ddp_run",
             "test_verl_integration.py::test_two_data_parallel_ranks")
LONGEST_FIRST = ("test_notebook_runs[04", "test_notebook_runs[03", "test_accelerate_launch.py::", "test_app.py::",
                 "test_notebook_runs[05", "test_notebook_runs[06", "test_memory_mode_measures",
                 "test_gpu_script_runs_end_to_end", "test_notebook_runs[02", *TWO_RANKS)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in item.nodeid for name in TWO_RANKS):
            item.add_marker(pytest.mark.xdist_group("two-ranks"))
        elif "test_app.py::" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("explorer"))

    def rank(item):
        return next((place for place, name in enumerate(LONGEST_FIRST) if name in item.nodeid), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the same order on every worker, collection order within a rank
