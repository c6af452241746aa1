import os
import sys
from pathlib import Path

# Tests import the packages from the checkout even without an editable install.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep CPU tests reproducible and fair on 2 cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
