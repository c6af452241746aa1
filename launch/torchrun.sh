#!/usr/bin/env bash
# The torchrun alternative (plain PyTorch DDP, no DeepSpeed needed), one node or several.
#
#   launch/torchrun.sh configs/mlm_stage1.yaml                     # all GPUs of this node
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 launch/torchrun.sh configs/mlm_stage1.yaml   # on each node
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${1:-configs/mlm_stage1.yaml}
shift || true
NPROC=${NPROC:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}

exec torchrun --nproc_per_node "$NPROC" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m encoder.train_mlm --config "$CONFIG" train.engine=plain "$@"
