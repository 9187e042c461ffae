"""Make `render` (the chart render helper next to these tests) importable in any import mode."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
