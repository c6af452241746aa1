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
