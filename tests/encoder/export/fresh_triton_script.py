"""Fresh process, TRITON_INTERPRET=1: the export's bundled Triton kernels (attention + RoPE) against its SDPA path.
argv: export directory. Prints the max abs difference."""

import importlib.util
import sys

import torch
from transformers import AutoModel

if importlib.util.find_spec("encoder") is not None or importlib.util.find_spec("kernels") is not None:
    raise SystemExit("the repository is importable: the bundled kernels would not be what runs")

directory = sys.argv[1]
generator = torch.Generator().manual_seed(0)
ids = torch.randint(4, 400, (3, 37), generator=generator)
mask = torch.ones_like(ids)
mask[1, 20:] = 0
mask[2, 5:] = 0
sdpa = AutoModel.from_pretrained(directory, trust_remote_code=True, attention_backend="sdpa", rope_impl="torch")
triton = AutoModel.from_pretrained(directory, trust_remote_code=True, attention_backend="triton", rope_impl="triton")
assert triton.encoder.resolved_attention_backend() == "triton"
with torch.no_grad():
    a = sdpa.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    b = triton.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
print(f"max_abs_diff={(a - b).abs().max().item():.3e}")
