#!/usr/bin/env bash
# Sets up the environment (first time: ~5 minutes) and runs the quickstart recipe end to end.
# Extra arguments go to `selfplay run`, e.g. `bash scripts/quickstart.sh loop.iterations=4`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
set -euo pipefail
cd "$SELFPLAY_REPO"
RUN_DIR="${RUN_DIR:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}"
selfplay validate recipes/tiny.yaml
selfplay run recipes/tiny.yaml --output-dir "$RUN_DIR" "$@"
selfplay status "$RUN_DIR"
