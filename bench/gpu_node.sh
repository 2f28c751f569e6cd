#!/usr/bin/env bash
# The checks a lent GPU machine (16 cores, one GPU, no network) can make, in one run: the cost model's
# inputs measured on a node instead of predicted from 2 cores. Steps, in the order given:
#   engine     bench.engine_speed: mapex-130m SAR specialist, ONNX Runtime CPU vs PyTorch CUDA (fp32, bf16)
#   serve      bench.serve as shipped, one service process and four (UVICORN_WORKERS=4)
#   scene      bench.scene, a 4096² scene, one round (SCENE_ROUNDS)
#   cpu_split  bench.cpu_split for this node, predicting with the engine step's CUDA fp32 figure at batch 32
#              (or ENGINE_TILES_S)
#   parts      bench.parts, a lone 4096² scene in 1, 2, 4, 8 and 15 parts
#   scene_parts  bench.scene as shipped and split into 2, 4, 8 and 15 parts (MAPEX_PREDICT_PARTS)
#   serve8     bench.serve with eight service processes
#   arriving   bench.arriving, a 4096² scene over a 1 Gbit/s link, as shipped (a lone scene split across the
#              idle workers, each part of a COG read as its rows arrive)
#   profile    bench.scene once more under py-spy (its wheel in .whl): where every process's time goes
# Usage there: bash bench/gpu_node.sh engine serve scene (carrying .whl and the model repository REPO).
# The machine has no network, and its python3 (3.12) has torch, onnxruntime and numpy but not the rest.
# Prepared here, both ignored by git (.git/info/exclude): REPO (.devrepo) a copy of a built repository's
# landcover-rgb, landcover-seg-rgb and flood-sar, and .whl the cp312 wheels, at .venv's versions, of
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
#     pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types rasterio \
#     affine cligj click-plugins shapely fastapi starlette uvicorn httptools python-multipart \
#     opentelemetry-api py-spy
# (55 MB in all with REPO, under the 64 MiB a run carries). Each step's reports are added to
# $OUT/results.tar.gz as it ends: the tool returns at most 8 files, and what a step left when the whole
# run is stopped still comes back.
set -u
OUT=${OUT:-/tmp/gpu-node}
REPO=${REPO:-.devrepo}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/r"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
$PY -c "import sys, os, torch, onnxruntime, rasterio, fastapi; print(sys.version.split()[0], 'cores', len(os.sched_getaffinity(0)), 'torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0), 'ort', onnxruntime.__version__, 'gdal', rasterio.__gdal_version__)" || exit 1
nvidia-smi -L 2>/dev/null

step() {  # step NAME SECONDS COMMAND...: one benchmark, bounded in time, its report kept whatever the others do
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" 2>&1 | grep -v '%|' | tail -40
  echo "=== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s"
}

for s in "$@"; do
  case $s in
    engine) step engine 150 $PY -m bench.engine_speed --batch 32 128 --repeats 10 --out "$OUT/r/engine" ;;
    serve)
      step serve1 80 $PY -m bench.serve --repo "$REPO" --modes on --concurrency 1 32 64 --requests 2048 --rounds 0 --out "$OUT/r/serve1"
      step serve4 80 $PY -m bench.serve --repo "$REPO" --modes on --concurrency 32 64 --requests 4096 --rounds 0 --processes 4 --out "$OUT/r/serve4" ;;
    scene) step scene 150 $PY -m bench.scene --repo "$REPO" --size 4096 --modes on --rounds ${SCENE_ROUNDS:-1} --out "$OUT/r/scene" ;;
    cpu_split)
      ENGINE_TILES_S=${ENGINE_TILES_S:-$($PY -c "import json; rows = json.load(open('$OUT/r/engine/engine_speed.json'))['rows']; print(next(r['tiles_per_s'] for r in rows if r['device'] == 'cuda' and r['batch'] == 32 and r['engine'].endswith('fp32')))" 2>/dev/null)}
      step cpu_split 110 $PY -m bench.cpu_split --repo "$REPO" --cores "$(nproc)" ${ENGINE_TILES_S:+--engine-tiles-s "$ENGINE_TILES_S"} --out "$OUT/r/cpu_split" ;;
    scene_parts) step scene_parts 170 $PY -m bench.scene --repo "$REPO" --size 4096 --modes on --predict-parts 2 4 8 15 --rounds 1 --out "$OUT/r/scene_parts" ;;
    arriving) step arriving 150 $PY -m bench.arriving --repo "$REPO" --size 4096 --mbps 1000 --rounds 1 --out "$OUT/r/arriving" ;;
    serve8) step serve8 80 $PY -m bench.serve --repo "$REPO" --modes on --concurrency 64 128 --requests 8192 --rounds 0 --processes 8 --out "$OUT/r/serve8" ;;
    profile)
      mkdir -p "$OUT/r/profile"
      step profile 150 /tmp/site/bin/py-spy record --subprocesses --threads --nonblocking --rate 50 --format raw -o "$OUT/r/profile/scene.txt" -- $PY -m bench.scene --repo "$REPO" --size 4096 --modes on --rounds 1 --out "$OUT/r/profile" ;;
    parts) step parts 50 $PY -m bench.parts --repo "$REPO" --parts 1 2 4 8 15 --rounds 1 --out "$OUT/r/parts" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
  tar -czf "$OUT/results.tar.gz" -C "$OUT" r
done
