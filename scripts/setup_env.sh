#!/usr/bin/env bash
# Creates .venv with the pinned install (idempotent). torch goes in first and alone, pinned, so that
# no other package can pull a multi-GB CUDA build; deepspeed builds against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
# EXTRAS: the optional groups to install. The default is everything the tests use. `EXTRAS=` installs what the
# pipeline needs (make demo), which saves the 30 s that Triton, DeepSpeed and the test tools take.
FULL=triton,deepspeed,dev
EXTRAS=${EXTRAS-$FULL}
hash=$(sha1sum constraints.txt pyproject.toml | sha1sum | cut -c1-12)
stamp="$VENV/.installed-$hash-${EXTRAS:-base}"
if [ -f "$stamp" ] || [ -f "$VENV/.installed-$hash-$FULL" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
export PIP_CONSTRAINT="$PWD/constraints.txt"
echo "[setup] installing torch (pinned) into $VENV" >&2
pip install "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)"
echo "[setup] installing the project and its pinned dependencies${EXTRAS:+ (extras: $EXTRAS)}" >&2
DS_BUILD_OPS=0 pip install -e ".${EXTRAS:+[$EXTRAS]}"
"$VENV/bin/python" -c "import torch, transformers, sentence_transformers, datasets, sentencepiece" \
  || { echo "[setup] install check failed" >&2; exit 1; }
case ",$EXTRAS," in *,triton,*) "$VENV/bin/python" -c "import triton" \
  || { echo "[setup] install check failed (triton)" >&2; exit 1; } ;; esac
rm -f "$VENV"/.installed-*
touch "$stamp"
