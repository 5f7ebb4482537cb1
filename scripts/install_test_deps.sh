#!/usr/bin/env bash
# Everything the test suite needs, on top of the README's first command:
#   * Debian's Chromium, driven headless by Playwright in the explorer's browser test
#     (Playwright's own browser download needs a network this project does not assume);
#   * the test tools and the optional integrations (pyproject extras "test", "trl", "deepspeed", "lora",
#     "notebooks", "verl"). verl 0.9 pins transformers<5.11, so this environment gets transformers 5.10.x
#     (minnat alone installs the newest 5.x); minnat, TRL 1.16 and peft accept both.
# The README's second command is `bash scripts/install_test_deps.sh && python -m pytest -q`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  as_root=""
  if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $as_root apt-get update -q
  $as_root apt-get install -y -q chromium
fi

python -m pip install -q -e ".[test,trl,deepspeed,lora,notebooks,verl]"
