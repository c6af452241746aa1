import os
import sys
from pathlib import Path

# Tests import the packages from the checkout even without an editable install.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep CPU tests reproducible and fair on 2 cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Without a GPU the Triton kernels run in Triton's interpreter. TRITON_INTERPRET must be set before triton is
# first imported, and third-party packages import it on their own (sentence-transformers does, at import),
# so it is set here, in the root conftest, before any test module is collected.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


# ---- session fixtures shared by the data_prep and encoder tests -------------------------------------------------
import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402


@dataclass(frozen=True)
class TinyAssets:
    data: object  # data_prep.embedded.EmbeddedData of the tiny embedded set
    units: dict  # its aligned units (data_prep.longdoc.load_units)
    tokenizer_dir: Path  # a sentencepiece tokenizer trained on its MLM texts (HF directory)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> TinyAssets:
    """The tiny embedded set (pairs, BEIR eval, units) and a 4000-piece tokenizer trained on its MLM texts,
    built once per session."""
    from data_prep.embedded import build_embedded
    from data_prep.longdoc import load_units
    from data_prep.tokenizer import save_hf_tokenizer, train_sentencepiece

    out = tmp_path_factory.mktemp("tiny_assets")
    data = build_embedded(out / "embedded", size="tiny")
    texts = [json.loads(line)["text"] for path in data.mlm_files.values()
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    spm_path = train_sentencepiece(texts, out / "tokenizer" / "spm", vocab_size=4000)
    return TinyAssets(data, load_units(data.root), save_hf_tokenizer(spm_path, out / "tokenizer" / "hf"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_assets):
    from data_prep.tokenizer import load_tokenizer

    return load_tokenizer(tiny_assets.tokenizer_dir)


@pytest.fixture(scope="session")
def needle_sets(tiny_assets, tiny_tokenizer):
    """Every length bucket up to 8192 tokens, queries in other languages (the default eval)."""
    from data_prep.longdoc import build_longdoc_sets

    return build_longdoc_sets(tiny_assets.units, tiny_tokenizer, seed=0)
