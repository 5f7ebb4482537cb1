"""Files shipped inside the package. `TINY_QWEN3_DIR` is the embedded tiny
character-level Qwen3 (Hugging Face format) warm-started on the "arithmetic"
task; `scripts/make_tiny_model.py` rebuilds it."""

from pathlib import Path

TINY_QWEN3_DIR = Path(__file__).parent / "tiny-qwen3"
