#!/usr/bin/env bash
# LLaVA-1.5 with any vision tower: pretraining (projector only) then instruction tuning (LLM +
# projector, tower frozen). A launcher for `python -m genfeedback llava`: the recipe is the
# preset's (mllm_train/configs), only --vision-tower changes between towers; `--help` lists the flags.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
exec "$GF_PY" -m genfeedback llava "$@"
