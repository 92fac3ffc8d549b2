"""Suite-wide settings that must precede any import of huggingface_hub (it reads them once)."""

import os

# The local Hub test server (tests/hub_server.py) speaks LFS, not Xet.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
