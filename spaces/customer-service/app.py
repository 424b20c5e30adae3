"""Hugging Face Space: fmhub customer-service demo (the same tab as the fmhub hub app).

Model: the `FMHUB_MODEL` variable (a Hub id or folder), else `fmhub_space.json`'s model, else the embedded default
(fine-tuned on first start). Runs locally too: `pip install -r requirements.txt && python app.py`.
"""

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for candidate in (HERE, HERE.parent.parent):  # deployed: fmhub/ beside this file; in the fmhub repo: two levels up
    if (candidate / "fmhub" / "__init__.py").is_file():
        sys.path.insert(0, str(candidate))
        break

from fmhub.ui.space import build_space_demo, launch_space  # noqa: E402

settings = json.loads((HERE / "fmhub_space.json").read_text()) if (HERE / "fmhub_space.json").is_file() else {}
demo = build_space_demo("customer-service", os.environ.get("FMHUB_MODEL") or settings.get("model"))

if __name__ == "__main__":
    launch_space(demo)
