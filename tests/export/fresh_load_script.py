"""Run in a FRESH process without the repository on sys.path: load exports with transformers and
sentence-transformers only, and save every output for the test to compare. argv: exports root, output file."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

if importlib.util.find_spec("encoder") is not None:
    raise SystemExit("the repository package `encoder` is importable: the test would not prove anything")

from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

root, out_file = Path(sys.argv[1]), sys.argv[2]
spec = json.loads((root / "inputs.json").read_text(encoding="utf-8"))
texts, pairs, truncate_dim = spec["texts"], [tuple(p) for p in spec["pairs"]], spec["truncate_dim"]
results = {}


def padded(tokenizer, *args):
    return tokenizer(*args, padding=True, return_tensors="pt")


with torch.no_grad():
    mlm = root / "mlm"
    tok = AutoTokenizer.from_pretrained(mlm, trust_remote_code=True)
    enc = padded(tok, texts)
    results["input_ids"] = enc["input_ids"]
    results["attention_mask"] = enc["attention_mask"]
    results["mlm_logits"] = AutoModelForMaskedLM.from_pretrained(mlm, trust_remote_code=True).eval()(**enc).logits
    results["mlm_hidden"] = AutoModel.from_pretrained(mlm, trust_remote_code=True).eval()(**enc).last_hidden_state

    trm = root / "trm"
    results["trm_hidden"] = AutoModel.from_pretrained(trm, trust_remote_code=True).eval()(**enc).last_hidden_state
    token_model = AutoModelForTokenClassification.from_pretrained(trm, trust_remote_code=True).eval()
    results["trm_sparse_logits"] = token_model(**enc).logits
    st = SentenceTransformer(str(trm), trust_remote_code=True, device="cpu")
    results["st_dense"] = st.encode(texts, convert_to_tensor=True)
    results["st_max_seq_length"] = torch.tensor(st.max_seq_length)
    st_small = SentenceTransformer(str(trm), trust_remote_code=True, device="cpu", truncate_dim=truncate_dim)
    results["st_dense_truncated"] = st_small.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    sparse = SparseEncoder(str(trm / "sparse"), trust_remote_code=True, device="cpu")
    results["st_sparse"] = sparse.encode(texts, convert_to_tensor=True).to_dense()

    rr = root / "reranker"
    tok = AutoTokenizer.from_pretrained(rr, trust_remote_code=True)
    pair_enc = padded(tok, [p[0] for p in pairs], [p[1] for p in pairs])
    results["pair_input_ids"] = pair_enc["input_ids"]
    results["pair_attention_mask"] = pair_enc["attention_mask"]
    seq_model = AutoModelForSequenceClassification.from_pretrained(rr, trust_remote_code=True).eval()
    results["rr_logits"] = seq_model(**pair_enc).logits
    results["ce_scores"] = torch.as_tensor(CrossEncoder(str(rr), trust_remote_code=True, device="cpu").predict(pairs))

torch.save(results, out_file)
print("fresh process: ok")
