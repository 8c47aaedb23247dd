#!/usr/bin/env bash
# Issue 9's GPU checks in one call on the lent GPU machine: the `gpu` tests and the four benchmarks, the cheap and
# the most wanted first, each under its own time limit (at most 565 s in all), each writing what it prints to $OUT as
# it goes, so a call cut off keeps what was measured. docs/gpu.md ("On a GPU") says how to call it:
#
#   make gpu-kit                                  # here, once (needs PyPI): the wheels the lent machine lacks
#   bash benchmarks/gpu_session.sh                # there, with .gpu-kit carried: env tests recon sd side train
#   bash benchmarks/gpu_session.sh stage          # there, a second call if 2 min are left: the real prepare, encode
#                                                 # and train_a stages, 300 steps of the DDPM study profile's model
#   bash benchmarks/gpu_session.sh train-big      # there, if 3 min are left: training the 35.7M UNet too
#   bash benchmarks/gpu_session.sh forecast       # there, if 1 min is left: the forecasts against one train_b run
#   GPU_SESSION_DEVICE=cpu bash benchmarks/gpu_session.sh --smoke   # here: each benchmark's tiny size (the tests)
#
# Files under $OUT (default gpu-out): session.txt (everything printed, with each step's exit status and seconds),
# env.txt, gpu_tests.txt, one bench_*.txt per benchmark (its figure lines), stage.txt. A failed step does not stop
# the others; the script then exits 1 and names it last. $PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
DEVICE=${GPU_SESSION_DEVICE:-cuda}
STEPS="env tests recon sd side train stage train-big forecast"
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

if [ $smoke = 1 ]; then
  size=(--smoke); runs=2; compile=(); profile=tests/tiny_params.yaml; stage_steps=2
else
  size=(--quick); runs=6; compile=(--compile); profile=profiles/ddpm-mnist-study.yaml; stage_steps=300
fi

ENV_PY='
import platform, torch, diffusers, pydantic, hopfield_replay.models
gpu = "no CUDA"
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    gpu = f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB)"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), {gpu}")
print(f"diffusers {diffusers.__version__}, pydantic {pydantic.__version__}")'

stages() {  # the real prepare, encode and train_a stages, as dvc.yaml runs them, in a scratch folder
  local work
  work=$(mktemp -d) || return 1
  "$PY" -c 'import sys, yaml
from hopfield_replay.io.params_file import read_yaml
from tools.params_yaml import deep_merge
params, profile, work, steps, device = sys.argv[1:]
merged = deep_merge(read_yaml(open(params).read()), read_yaml(open(profile).read()))
merged.pop("profile", None)
merged["device"], merged["train_a"]["steps"] = device, int(steps)
merged["execution"] = {**merged.get("execution", {}), "checkpoint_dir": f"{work}/checkpoints"}
yaml.safe_dump(merged, open(f"{work}/params.yaml", "w"))' params.yaml "$profile" "$work" "$stage_steps" "$DEVICE" &&
  "$PY" -m stages.prepare --params "$work/params.yaml" --out-images "$work/images.safetensors" \
    --out-samples "$work/samples.parquet" &&
  "$PY" -m stages.encode --params "$work/params.yaml" --images "$work/images.safetensors" \
    --out "$work/model_space.safetensors" &&
  { time "$PY" -m stages.train_a --params "$work/params.yaml" --x0 "$work/model_space.safetensors" \
    --samples "$work/samples.parquet" --out "$work/task_a" --out-curves "$work/curves"; }
  local rc=$?
  rm -rf "$work"
  return $rc
}

step() {  # step NAME SECONDS FILE COMMAND...: run it under its limit; what it prints goes to session.txt (and FILE)
  local name=$1 limit=$2 file=$3 start=$SECONDS
  shift 3
  echo "== $name (at most $limit s): $*" | tee -a "$OUT/session.txt"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/session.txt" ${file:+"$OUT/$file"}
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/session.txt"
  [ "$rc" = 0 ] || failed+=("$name")
}

failed=()

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
    stage) export -f stages; export PY DEVICE profile stage_steps; step stage 90 stage.txt bash -c stages ;;
    forecast) step forecast 60 "" "$PY" benchmarks/bench_forecast.py --device "$DEVICE" "${size[@]}" \
      --out "$OUT/bench_forecast.txt" ;;
    train-big) step train-big 150 "" "$PY" benchmarks/bench_train.py --device "$DEVICE" --big "${size[@]}" \
      --out "$OUT/bench_train_big.txt" ;;
  esac
done
if [ ${#failed[@]} -gt 0 ]; then  # every step ran; say which failed (a timeout is exit 124)
  echo "== failed: ${failed[*]}" | tee -a "$OUT/session.txt"
  exit 1
fi
