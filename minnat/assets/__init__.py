"""Files shipped inside the package: the embedded tiny character-level Qwen3 models
(Hugging Face format), one warm-started per embedded task. `scripts/make_tiny_model.py`
rebuilds them (`--task arithmetic`, `--task long-addition` or `--task late-credit`).

* `TINY_QWEN3_DIR`: warm-started on "arithmetic" (answers of tens of tokens).
* `TINY_QWEN3_LONG_DIR`: warm-started on "long-addition" (answers of hundreds of tokens).
* `TINY_QWEN3_LATE_CREDIT_DIR`: warm-started on "late-credit" (scratch work, then a short sum).
"""

from pathlib import Path

TINY_QWEN3_DIR = Path(__file__).parent / "tiny-qwen3"
TINY_QWEN3_LONG_DIR = Path(__file__).parent / "tiny-qwen3-long"
TINY_QWEN3_LATE_CREDIT_DIR = Path(__file__).parent / "tiny-qwen3-late-credit"

# which embedded model `--model embedded` means for each task (other tasks: the arithmetic one)
EMBEDDED_MODEL_DIRS = {"arithmetic": TINY_QWEN3_DIR, "long-addition": TINY_QWEN3_LONG_DIR,
                       "late-credit": TINY_QWEN3_LATE_CREDIT_DIR}
