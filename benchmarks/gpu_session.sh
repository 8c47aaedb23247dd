#!/usr/bin/env bash
# Issue 9's GPU checks in one call on the lent GPU machine: the `gpu` tests and the four benchmarks, the cheap and
# the most wanted first, each under its own time limit (at most 565 s in all), each writing what it prints to $OUT as
# it goes, so a call cut off keeps what was measured. docs/gpu.md ("On a GPU") says how to call it:
#
#   make gpu-kit                                  # here, once (needs PyPI): the wheels the lent machine lacks
#   bash benchmarks/gpu_session.sh                # there, with .gpu-kit carried: env tests recon sd side train
#   bash benchmarks/gpu_session.sh train-big      # there, a second call if time is left: the 35.7M UNet too
#   GPU_SESSION_DEVICE=cpu bash benchmarks/gpu_session.sh --smoke   # here: each benchmark's tiny size (the tests)
#
# Files under $OUT (default gpu-out): session.txt (everything printed, with each step's exit status and seconds),
# env.txt, gpu_tests.txt and one bench_*.txt per benchmark (its figure lines). $PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
DEVICE=${GPU_SESSION_DEVICE:-cuda}
STEPS="env tests recon sd side train train-big"
smoke=0
steps=()
for arg in "$@"; do
  case " $STEPS --smoke " in
    *" $arg "*) if [ "$arg" = --smoke ]; then smoke=1; else steps+=("$arg"); fi ;;
    *) echo "gpu_session.sh: unknown step '$arg'; use some of: $STEPS, or --smoke" >&2; exit 2 ;;
  esac
done
[ ${#steps[@]} -gt 0 ] || steps=(env tests recon sd side train)
mkdir -p "$OUT"

if [ -d .gpu-kit ]; then  # the kit from `make gpu-kit`: pure wheels, and pydantic's core built for this Python
  tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  site=${TMPDIR:-/tmp}/gpu-kit-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .gpu-kit/*.whl .gpu-kit/"$tag"/*.whl || { echo "gpu_session.sh: .gpu-kit has no wheels for $tag" >&2; exit 2; }
  export PYTHONPATH=$site
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if [ $smoke = 1 ]; then size=(--smoke); runs=2; compile=(); else size=(--quick); runs=6; compile=(--compile); fi

ENV_PY='
import platform, torch, diffusers, pydantic, hopfield_replay.models
gpu = "no CUDA"
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    gpu = f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB)"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), {gpu}")
print(f"diffusers {diffusers.__version__}, pydantic {pydantic.__version__}")'

step() {  # step NAME SECONDS FILE COMMAND...: run it under its limit; what it prints goes to session.txt (and FILE)
  local name=$1 limit=$2 file=$3 start=$SECONDS
  shift 3
  echo "== $name (at most $limit s): $*" | tee -a "$OUT/session.txt"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/session.txt" ${file:+"$OUT/$file"}
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/session.txt"
}

for s in "${steps[@]}"; do
  case $s in
    env) step env 30 env.txt "$PY" -c "$ENV_PY" ;;
    tests) step tests 75 gpu_tests.txt "$PY" -m pytest -q -p no:cacheprovider -o addopts=-ra -m gpu \
      tests/test_training_device.py tests/test_noise.py tests/test_energy.py ;;
    recon) step recon 45 "" "$PY" benchmarks/bench_reconstruction.py --device "$DEVICE" --big "${size[@]}" \
      --out "$OUT/bench_reconstruction.txt" ;;
    sd) step sd 110 "" "$PY" benchmarks/bench_sd.py --device "$DEVICE" "${size[@]}" --out "$OUT/bench_sd.txt" ;;
    side) step side 100 "" "$PY" benchmarks/bench_side_by_side.py --device "$DEVICE" --runs $runs "${size[@]}" \
      --out "$OUT/bench_side_by_side.txt" ;;
    train) step train 205 "" "$PY" benchmarks/bench_train.py --device "$DEVICE" "${compile[@]}" "${size[@]}" \
      --out "$OUT/bench_train.txt" ;;
    train-big) step train-big 240 "" "$PY" benchmarks/bench_train.py --device "$DEVICE" --big "${size[@]}" \
      --out "$OUT/bench_train_big.txt" ;;
  esac
done
