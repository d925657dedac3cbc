#!/usr/bin/env bash
# Sets up the environment (first time: ~5 minutes), then the quickstart: SmolLM2-135M-Instruct
# trained online with RePO to follow verifiable instructions (5 minutes of training, ~10 in all
# on 2 CPU cores),
# its held-out score before and after, and the run report.
#   bash scripts/quickstart.sh                     # the real quickstart
#   bash scripts/quickstart.sh loop.iterations=4   # extra arguments go to `selfplay run`
#   bash scripts/quickstart.sh tiny                # the 1-minute toy task instead
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
set -euo pipefail
cd "$SELFPLAY_REPO"
RECIPE=quickstart
if [ "${1:-}" = "tiny" ]; then RECIPE=tiny; shift; fi
RUN_DIR="${RUN_DIR:-runs/$RECIPE-$(date +%Y%m%d-%H%M%S)}"
selfplay validate "recipes/$RECIPE.yaml"
selfplay run "recipes/$RECIPE.yaml" --output-dir "$RUN_DIR" "$@"
if [ "$RECIPE" = quickstart ]; then
    # The base model and the trained one on the same held-out prompts (a seed never used for
    # training), greedy: a paired difference with its 95% interval.
    selfplay eval builtin:smollm2-135m-instruct "$RUN_DIR" \
        --prompts recipes/data/ifeval-heldout.jsonl --max-new-tokens 128 --max-model-len 512 \
        --out "$RUN_DIR/eval-heldout.json"
fi
selfplay report "$RUN_DIR"
