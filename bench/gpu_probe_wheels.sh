#!/usr/bin/env bash
# The wheels bench/gpu_probe.py needs beyond the GPU machine's image (Python 3.12, torch,
# transformers, numpy, pyyaml, click, psutil, safetensors are there), into .whl/ (git-ignored),
# for the device tool to carry: the versions this project's CPU environment uses.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hjson==3.1.0
# DeepSpeed publishes only a source archive: a pure-Python wheel (no ops compiled ahead).
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8 \
    || DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8
ls -la .whl
