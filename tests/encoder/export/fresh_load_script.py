"""Run in a FRESH process without the repository on sys.path: load exports with transformers and
sentence-transformers only, and save every output for the test to compare. argv: exports root, output file.

Every load (and first use) runs inside `stage(name)`, which records what the user would be shown: Python warnings
(under the default filters) and log records of WARNING and above from any logger. The test requires every stage
to record nothing and the process's own stdout/stderr to hold nothing but the final "ok" line. The weight-loading
progress bar is switched off, as it is progress, not a warning; anything else printed fails the test.
"""

import contextlib
import importlib.util
import json
import logging
import sys
import warnings
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
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"log {record.name} {record.levelname}: {record.getMessage()}")


RECORDER = Recorder()
# transformers' and sentence-transformers' library loggers do not propagate to the root: attach to each
for name in ("", "transformers", "sentence_transformers", "huggingface_hub", "torch", "tokenizers"):
    logging.getLogger(name).addHandler(RECORDER)
DIAGNOSTICS: dict[str, list[str]] = {}


@contextlib.contextmanager
def stage(name: str):
    RECORDER.records = []
    with warnings.catch_warnings(record=True) as caught:
        yield
    DIAGNOSTICS[name] = RECORDER.records + [f"warning {w.category.__name__}: {w.message}" for w in caught]


def attempt(fn):
    """fn()'s result, or the error it raised as "Type: message" (the test checks both)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}"


root, out_file = Path(sys.argv[1]), sys.argv[2]
spec = json.loads((root / "inputs.json").read_text(encoding="utf-8"))
texts, pairs, truncate_dim = spec["texts"], [tuple(p) for p in spec["pairs"]], spec["truncate_dim"]
dirty, cleaned = spec["dirty_texts"], spec["cleaned_texts"]  # lone surrogates, and the same with U+FFFD
results = {}


def padded(tokenizer, *args):
    return tokenizer(*args, padding=True, return_tensors="pt")


def buffers(model) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers()}


with torch.no_grad():
    mlm = root / "mlm"
    with stage("mlm AutoTokenizer"):
        tok = AutoTokenizer.from_pretrained(mlm, trust_remote_code=True)
        enc = padded(tok, texts)
    results["input_ids"] = enc["input_ids"]
    results["attention_mask"] = enc["attention_mask"]
    with stage("mlm AutoModelForMaskedLM"):
        model = AutoModelForMaskedLM.from_pretrained(mlm, trust_remote_code=True).eval()
        results["mlm_logits"] = model(**enc).logits
    with stage("mlm AutoModel"):
        results["mlm_hidden"] = AutoModel.from_pretrained(mlm, trust_remote_code=True).eval()(**enc).last_hidden_state

    trm = root / "trm"
    with stage("trm AutoModel"):
        results["trm_hidden"] = AutoModel.from_pretrained(trm, trust_remote_code=True).eval()(**enc).last_hidden_state
    with stage("trm AutoModelForTokenClassification"):
        token_model = AutoModelForTokenClassification.from_pretrained(trm, trust_remote_code=True).eval()
        results["trm_sparse_logits"] = token_model(**enc).logits
        results["trm_sparse_embedding"] = token_model.sparse_embedding(enc["input_ids"], enc["attention_mask"])
    results["trm_buffers"] = buffers(token_model)
    # the collection's own statistics (here: the texts themselves), as the evaluation scores
    collection = tok(texts, add_special_tokens=False)["input_ids"]
    token_model.fit_sparse_statistics(collection)
    results["trm_sparse_embedding_fitted"] = token_model.sparse_embedding(enc["input_ids"], enc["attention_mask"])
    with stage("trm SentenceTransformer"):
        st = SentenceTransformer(str(trm), trust_remote_code=True, device="cpu")
        results["st_dense"] = st.encode(texts, convert_to_tensor=True)
    results["st_max_seq_length"] = torch.tensor(st.max_seq_length)
    results["st_dense_dirty"] = attempt(lambda: st.encode(dirty, convert_to_tensor=True))
    results["st_dense_cleaned"] = st.encode(cleaned, convert_to_tensor=True)
    results["st_none"] = attempt(lambda: st.encode(["fine", None]))
    with stage("trm_mean SentenceTransformer"):  # a TRM that pools by the mean of its tokens
        st_mean = SentenceTransformer(str(root / "trm_mean"), trust_remote_code=True, device="cpu")
        results["st_dense_mean"] = st_mean.encode(texts, convert_to_tensor=True)
    with stage("trm SentenceTransformer truncate_dim"):
        st_small = SentenceTransformer(str(trm), trust_remote_code=True, device="cpu", truncate_dim=truncate_dim)
        results["st_dense_truncated"] = st_small.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    with stage("trm/sparse SparseEncoder"):
        sparse = SparseEncoder(str(trm / "sparse"), trust_remote_code=True, device="cpu")
        results["st_sparse"] = sparse.encode(texts, convert_to_tensor=True).to_dense()
    results["st_sparse_dirty"] = attempt(lambda: sparse.encode(dirty, convert_to_tensor=True).to_dense())
    results["st_sparse_cleaned"] = sparse.encode(cleaned, convert_to_tensor=True).to_dense()
    next(m for m in sparse if hasattr(m, "fit_sparse_statistics")).fit_sparse_statistics(collection)
    results["st_sparse_fitted"] = sparse.encode(texts, convert_to_tensor=True).to_dense()

    rr = root / "reranker"
    with stage("reranker AutoTokenizer"):
        tok = AutoTokenizer.from_pretrained(rr, trust_remote_code=True)
        pair_enc = padded(tok, [p[0] for p in pairs], [p[1] for p in pairs])
    results["pair_input_ids"] = pair_enc["input_ids"]
    results["pair_attention_mask"] = pair_enc["attention_mask"]
    with stage("reranker AutoModelForSequenceClassification"):
        seq_model = AutoModelForSequenceClassification.from_pretrained(rr, trust_remote_code=True).eval()
        results["rr_logits"] = seq_model(**pair_enc).logits
    with stage("reranker AutoModel"):
        rr_model = AutoModel.from_pretrained(rr, trust_remote_code=True).eval()
        results["rr_hidden"] = rr_model(**pair_enc).last_hidden_state
    with stage("reranker CrossEncoder"):
        ce = CrossEncoder(str(rr), trust_remote_code=True, device="cpu")
        results["ce_scores"] = torch.as_tensor(ce.predict(pairs))
    dirty_pairs = [(dirty[0], dirty[1]), (cleaned[2], dirty[2])]
    cleaned_pairs = [(cleaned[0], cleaned[1]), (cleaned[2], cleaned[2])]
    results["ce_scores_dirty"] = attempt(lambda: torch.as_tensor(ce.predict(dirty_pairs)))
    results["ce_scores_cleaned"] = torch.as_tensor(ce.predict(cleaned_pairs))
    results["ce_none"] = attempt(lambda: ce.predict([("q", "d"), ("q", None)]))

results["diagnostics"] = DIAGNOSTICS
torch.save(results, out_file)
print("fresh process: ok")
