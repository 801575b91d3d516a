#!/usr/bin/env bash
# The GPU measurements of docs/measurements.md ("One GPU"), as one prepared run on a lent GPU
# machine with no network. Run from the repository root:
#
#   bash benchmarks/gpu_session.sh PART OUT
#
# PART: bench (bench at 64 to 256 px without --compile, the recipe step times, notebook 04 in
# the gpu profile) or more (bench with --compile, notebook 00 in the gpu profile). OUT: a folder
# for log.txt, the tables and the executed notebooks. Expects CelebA photos in .gpu/celeba
# (a link to ../shared/data/celeba-8k) and, where the machine lacks them, wheels of nbclient,
# ipykernel and nbformat in .whl (for Python 3.12; the project's pins do not apply there).
set -uo pipefail
part=$1
out=$2
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1 MINILDM_CELEBA_DIR="$PWD/.gpu/celeba" MINILDM_PROFILE=gpu
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"

section() { echo; echo "== $1 ($(date +%T))"; }

execute_notebook() {  # notebook, seconds: run it with nbclient and keep the executed copy
    local name
    name=$(basename "$1")
    section "notebook $name, gpu profile"
    timeout "$2" python3 - "$1" "$out/$name" <<'EOF'
import sys
import time

import nbclient
import nbformat

notebook = nbformat.read(sys.argv[1], as_version=4)
started = time.perf_counter()
try:
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": "notebooks"}}).execute()
finally:
    nbformat.write(notebook, sys.argv[2])
    print(f"{sys.argv[1]}: {time.perf_counter() - started:.0f} s of wall time")
EOF
    echo "exit status $?"
}

if [ "$part" = bench ]; then
    section "bench, gpu profile, bf16, no compile"
    timeout 120 python3 -m minildm bench --profile gpu --resolutions 64,128,256 --factors 1,4,8 --out /tmp/bench \
        && cp /tmp/bench/bench.md "$out/bench.md"
    section "celebahq256 recipe, training steps"
    timeout 150 python3 benchmarks/gpu_recipes.py --images toyfaces --profile celebahq256 \
        --out "$out/recipes.md"
    execute_notebook notebooks/04_unet.ipynb 100
else
    section "bench, gpu profile, bf16, --compile"
    for resolution in 64 256; do
        timeout 200 python3 -m minildm bench --profile gpu --resolutions $resolution --factors 4 --compile \
            --out /tmp/bench_compile && cp /tmp/bench_compile/bench.md "$out/bench_compile_$resolution.md"
    done
    execute_notebook notebooks/00_data.ipynb 140
fi
section "done"
