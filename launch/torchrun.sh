#!/usr/bin/env bash
# The torchrun alternative (plain PyTorch DDP, no DeepSpeed needed), one node or several.
#
#   launch/torchrun.sh configs/mlm_stage1.yaml                     # all GPUs of this node
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 launch/torchrun.sh configs/mlm_stage1.yaml   # on each node
#   TRAINER=encoder.train_contrastive launch/torchrun.sh configs/trm_ft.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${1:-configs/mlm_stage1.yaml}
shift || true
if [[ -z "${PYTHON:-}" ]]; then  # the project's environment (make setup) unless PYTHON=... is given
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
NPROC=${NPROC:-$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
TRAINER=${TRAINER:-encoder.train_mlm}

exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m "$TRAINER" --config "$CONFIG" train.engine=plain "$@"
