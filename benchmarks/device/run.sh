#!/usr/bin/env bash
# The GPU figures on a lent H100/H200, one step per device call (each well inside its 10-minute limit); see
# benchmarks/README.md, "GPU runs". Carried wheels (.whl/) are installed first; a carried .fmnist/ folder of
# Fashion-MNIST's IDX files (.gz or .xz) stands in for Debian's dataset-fashion-mnist. Result files are
# copied to $OUT.
set -euo pipefail
step=${1:?usage: benchmarks/device/run.sh knn|selection|streaming|embed|train|fmnist}
cd "$(dirname "$0")/../.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d .fmnist ]; then export FASHION_MNIST_DIR="$PWD/.fmnist"; fi
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
home=${CURATION_HOME:-/tmp/curation-home}
curate() { "$python" -m curation.cli --home "$home" "$@"; }
fashion_mnist_version() {  # fashion-mnist@v1 in $home, made once per machine
  [ -d /tmp/fashion-mnist/train ] || "$python" benchmarks/prepare_fashion_mnist.py /tmp/fashion-mnist
  curate show fashion-mnist@v1 > /dev/null 2>&1 || curate run benchmarks/device/fashion-mnist.yaml
}
case "$step" in
  knn) "$python" benchmarks/knn_graph.py --sizes "${KNN_SIZES:-100000,1000000}" --flat-limit-s 60 --wait-idle 0 ;;
  selection) "$python" benchmarks/selection_balance.py --device "${DEVICE:-cuda}" --skip-balance --n "${SELECTION_N:-1000000}" \
               --levels "${SELECTION_LEVELS:-10000,1000,100,10}" --steps 1,10,10,10 --iterations 50 --faiss-repeats 1 ;;
  streaming) "$python" benchmarks/selection_streaming.py --n "${STREAMING_N:-1000000}" ;;  # GPU k-means + retrieval scan
  # shellcheck disable=SC2086  # EMBED_ARGS holds several words, e.g. "--compile --batch-sizes 512"
  embed) "$python" benchmarks/embed_throughput.py --device "${DEVICE:-cuda}" ${EMBED_ARGS:-} ;;
  train) fashion_mnist_version
         "$python" benchmarks/train_throughput.py --home "$home" --dataset fashion-mnist@v1 ${TRAIN_ARGS:-} ;;
  fmnist) fashion_mnist_version
          # shellcheck disable=SC2086  # TRAIN_SET holds several --set KEY=VALUE words
          curate train --dataset fashion-mnist@v1 --config "${TRAIN_CONFIG:-curation/train/configs/fashion-mnist-gpu.yaml}" \
            --out /tmp/fmnist-run ${TRAIN_SET:-}
          "$python" benchmarks/fashion_mnist_knn.py --run /tmp/fmnist-run --data /tmp/fashion-mnist ;;
  *) echo "unknown step: $step" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*-cuda-* "$OUT/" 2>/dev/null || true; fi
