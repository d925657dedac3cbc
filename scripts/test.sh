#!/usr/bin/env bash
# Sets up the environment (first time: ~5 minutes) and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k resume`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
set -euo pipefail
cd "$SELFPLAY_REPO"
exec python -m pytest -p no:cacheprovider "$@"
