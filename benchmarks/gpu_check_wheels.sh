#!/bin/bash
# Wheels that benchmarks/gpu_check.py needs on the lent GPU machine (Python 3.12; it has torch, accelerate, OpenCV,
# pandas, transformers, einops, pyarrow but no package index): imagen-pytorch and what it imports that the machine
# lacks, at requirements.lock's versions, into .whl/ (git-ignored). Run here, from the repository root, once:
#   echo /.whl/ >> .git/info/exclude; benchmarks/gpu_check_wheels.sh
# then on the GPU machine (carry .whl), as one command (see benchmarks/README.md, "GPU check"):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py --out $OUT
set -euo pipefail
names="imagen-pytorch beartype datasets dill multiprocess ema-pytorch kornia kornia_rs pytorch-warmup pydantic
       pydantic_core annotated-types typing-inspection"
pins=()
for name in $names; do
    pin=$(grep -i "^${name}==" requirements.lock) || { echo "$name is not in requirements.lock" >&2; exit 1; }
    pins+=("$pin")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}"
du -sh .whl
