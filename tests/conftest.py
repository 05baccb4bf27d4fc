import sys
from pathlib import Path

# tests import their helpers (kube_proxy_cases, netns) as top-level modules
sys.path.insert(0, str(Path(__file__).resolve().parent))
