#!/usr/bin/env bash
# Everything that needs a GPU, in one run sized for a short device lease.
#
# Run from the repository root on a CUDA machine:  bash scripts/device_check.sh
# Results go to $OUT (default ./device-out): log.txt (all output), purify.jsonl (one JSON row per
# end-to-end bench), ops_bench.json (pytest-benchmark JSON of the op benches), junit_*.xml (GPU tests).
# Steps run in order of importance, each under `timeout`, and a step is skipped when less time is left than
# it needs, so the script ends by itself within BUDGET_S seconds (default 520) and leaves whatever it measured.
# The fixtures travel with the checkout (tests/fixtures/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
END=$(($(date +%s) + ${BUDGET_S:-520}))
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
exec > >(tee -a "$OUT/log.txt") 2>&1

# step NAME NEEDED_S CMD...: run CMD under the time that is left, unless less than NEEDED_S is left.
step() {
    local name=$1 needed=$2 left rc
    shift 2
    left=$((END - $(date +%s)))
    if [ "$left" -lt "$needed" ]; then
        echo "=== $name: SKIPPED ($left s left, needs about $needed s)"
        return 0
    fi
    echo "=== $name ($(date -u +%H:%M:%S), $left s left): $*"
    SECONDS=0
    timeout --kill-after=10 $((left - 5)) "$@"
    rc=$?
    echo "=== $name: exit $rc after $SECONDS s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"

# 1. Build mimicfast._C (C++ and sm_90 CUDA kernels) against this machine's torch; Triton needs no build.
step build 60 env MIMICFAST_BUILD_CUDA=1 MAX_JOBS=16 CMAKE_BUILD_PARALLEL_LEVEL=16 \
    python3 -m pip install -q --no-build-isolation --no-deps --no-index -e .
if ! python3 -c "import mimicfast.kernels" 2>/dev/null; then  # pip itself failed: install without the extension
    step build-pure-python 30 env MIMICFAST_BUILD_EXT=0 python3 -m pip install -q --no-build-isolation --no-deps \
        --no-index -e .
fi
python3 -c "import mimicfast; print(mimicfast.backends())"

# 2. Correctness on the GPU first: the fast path (graph replay == eager, noise, no host sync, vs float64
#    Algorithm 1, bf16 accuracy of the bundled model at N = 256), then every op backend against the reference.
step tests-fast-path 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/fast/test_fast_path.py \
    tests/fast/test_input_vjp.py --junitxml="$OUT/junit_fast_path.xml"
step tests-ops 60 python3 -m pytest -q -p no:cacheprovider tests/ops --junitxml="$OUT/junit_ops.xml"

# 3. End-to-end benches, bf16 (the default policy), every configuration (ImageNet with and without the window,
#    at the same T), per-kind replay timing; each speed-up against the eager sampler in bf16 too.
export MIMICFAST_BENCH_OUT=$OUT/purify.jsonl
BENCH=(python3 -m pytest -q -p no:cacheprovider -s benches/bench_purify.py --benchmark-disable-gc -k)
step purify-bf16 90 env MIMICFAST_BENCH_FAST_STEPS=10 "${BENCH[@]}" "gpu and bf16"
# 4. Configurations timed over the whole loop too, to check the per-kind extrapolation (ImageNet batch 1 with
#    and without the window: the paper's 156 s and 268 s per image).
step purify-full-loop-check 60 env MIMICFAST_BENCH_FAST_STEPS=full "${BENCH[@]}" "gpu and gd256-b1 and bf16"
step purify-full-loop-cifar 30 env MIMICFAST_BENCH_FAST_STEPS=full "${BENCH[@]}" "gpu and edm-cifar10-b256 and bf16"
# 5. Policy variants at ImageNet batch 8 (window): precision (each against the eager sampler in its own
#    precision), layout, graphs per step vs 8 per graph, plain autograd VJP.
step purify-variants 90 env MIMICFAST_BENCH_FAST_STEPS=10 MIMICFAST_BENCH_VARIANTS=fp16,fp32,bf16-nhwc,bf16-chunk8,bf16-plainvjp \
    "${BENCH[@]}" "gpu and gd256-b8-window"
# 6. torch.compile of the network (minutes of compilation), then the op benches without compile: each op's
#    Triton and CUDA C++ providers side by side, which decides the dispatch's default on CUDA.
step purify-compile 150 env MIMICFAST_BENCH_FAST_STEPS=10 MIMICFAST_BENCH_VARIANTS=bf16-compile \
    "${BENCH[@]}" "gpu and gd256-b8-window"
step op-benches 60 env MIMICFAST_BENCH_COMPILE=none python3 -m pytest -q -p no:cacheprovider \
    benches/bench_l1_residual.py benches/bench_bicubic_up4.py --benchmark-json="$OUT/ops_bench.json"
echo "=== done at $(date -u +%H:%M:%S); results in $OUT"

# The short table last: what the tool's reply shows first is the end of the output.
python3 - "$OUT" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
for xml in sorted(out.glob("junit_*.xml")):
    s = ET.parse(xml).getroot()
    s = s if s.tag == "testsuite" else s[0]
    print(f"{xml.name}: {s.get('tests')} tests, {s.get('failures')} failures, {s.get('errors')} errors, "
          f"{s.get('skipped')} skipped")
rows = [json.loads(line) for line in (out / "purify.jsonl").read_text().splitlines()] if (out / "purify.jsonl").exists() else []
print(f"{'config':12} {'b':>4} {'window':9} {'variant':12} {'s/img':>9} {'img/s':>8} {'eager s/img':>11} "
      f"{'x eager':>8} {'floor':>6} {'x paper':>7} {'GiB':>6}  fast_method")
for r in rows:
    if r.get("bench") != "bench_purify" or "config" not in r:
        continue
    if "s_per_image" not in r:
        print(f"{r['config']:12} {r['batch']:>4} {r['window']:9} {r['variant']:12} {r.get('result')} "
              f"(auto batch {r.get('auto_batch_size')})")
        continue
    def f(key, spec, width):
        return ("-" if r.get(key) is None else format(r[key], spec)).rjust(width)

    print(f"{r['config']:12} {r['batch']:>4} {r['window']:9} {r['variant']:12} {r['s_per_image']:9.4g} "
          f"{r['images_per_s']:8.4g} {f('eager_s_per_image', '.4g', 11)} {f('speedup_vs_eager', '.3g', 8)} "
          f"{f('floor_fraction', '.1%', 6)} {f('x_paper', '.3g', 7)} {f('peak_mem_gib', '.3g', 6)}  "
          f"{r.get('fast_method', '')}")
PY
