"""Makes the real-data helper (``realdata.py``, beside the tests) importable under importlib mode."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
