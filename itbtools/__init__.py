# The host tools: pumpctl (the clinician programmer) and pumpbench (the bench rig's accuracy
# tests). They share the firmware's protocol code, which lives in firmware/ (put on the path here).

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT / "firmware"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
