#!/usr/bin/env bash
# A training stage on one node with the DeepSpeed launcher (N GPUs), or several nodes with a hostfile.
# TRAINER picks the stage's module: encoder.train_mlm (default), encoder.train_contrastive, encoder.train_reranker.
#
#   launch/pretrain.sh                                   # MLM stage 1, all GPUs of this node
#   NUM_GPUS=4 launch/pretrain.sh configs/mlm_stage2.yaml train.grad_accum=32
#   HOSTFILE=launch/hostfile launch/pretrain.sh configs/mlm_stage1.yaml     # multi-node (see README.md)
#   TRAINER=encoder.train_contrastive DS_CONFIG=launch/deepspeed/zero1.json launch/pretrain.sh configs/trm_ft.yaml
#
# Extra arguments after the config are `section.key=value` overrides or trainer flags (--resume, --stop-after).
# Re-running the same command resumes from the newest complete checkpoint (--resume auto is the default).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${1:-configs/mlm_stage1.yaml}
shift || true
# the project's environment (make setup), not whatever `python` is first on PATH; PYTHON=... overrides
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DS_CONFIG=${DS_CONFIG:-launch/deepspeed/zero2.json}
NUM_GPUS=${NUM_GPUS:-$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
MASTER_PORT=${MASTER_PORT:-29500}
TRAINER=${TRAINER:-encoder.train_mlm}

# the launcher runs under $PYTHON and starts every worker (over pdsh on other nodes too) with that interpreter
LAUNCH=("$PYTHON" -m deepspeed.launcher.runner --master_port "$MASTER_PORT")
if [[ -n "${HOSTFILE:-}" ]]; then
    # remote ranks start through pdsh (DeepSpeed's default multi-node launcher); LAUNCHER=openmpi|mvapich|slurm
    LAUNCH+=(--hostfile "$HOSTFILE" ${MASTER_ADDR:+--master_addr "$MASTER_ADDR"} ${LAUNCHER:+--launcher "$LAUNCHER"})
else
    LAUNCH+=(--num_gpus "$NUM_GPUS")
fi

exec "${LAUNCH[@]}" --module "$TRAINER" --config "$CONFIG" \
    train.engine=deepspeed train.deepspeed_config="$DS_CONFIG" "$@"
