"""Reaching the Hugging Face Hub quickly, or knowing fast that it cannot be reached.

Without a network, huggingface_hub and datasets retry for half a minute or more (``Retrying in 1s/2s/4s/8s``,
``MaxRetryError`` lines) before failing. :func:`prepare_hub` is called once, before the first Hub access of a
command and before those libraries are imported: it respects ``HF_HUB_OFFLINE=1``, and otherwise tries one TCP
connection to the Hub (``HF_ENDPOINT``) with a short timeout. When that fails, the process switches the
libraries to their offline mode (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``): what is in the local cache
still loads, anything else fails at once, and the command's own error line says what to do.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_state: dict[str, bool] = {}
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#'\"<>]*@)?(?P<rest>[^\s'\"<>]*)")
_QUERY_VALUE = re.compile(r"(?P<key>[?&;][^=&;#\s]*=)[^&;#\s]*")
_TOKEN = re.compile(r"\b(?P<prefix>hf_|api_org_)[A-Za-z0-9]{8,}|(?P<bearer>Bearer\s+)[^\s'\"]+")


def redact_url_secrets(text: str) -> str:
    """``text`` with every URL's user name and password, every query value, and any Hub token
    (``hf_...``, ``Bearer ...``) replaced by ``***``: for any message that shows an endpoint or a URL
    (``HF_ENDPOINT=http://user:password@host`` must never be echoed)."""

    def url(match: re.Match) -> str:
        userinfo = "***@" if match["userinfo"] else ""
        return match["scheme"] + userinfo + _QUERY_VALUE.sub(lambda m: m["key"] + "***", match["rest"])

    text = _URL.sub(url, str(text))
    return _TOKEN.sub(lambda m: (m["prefix"] or m["bearer"]) + "***", text)


def is_offline() -> bool:
    """Whether the user (or :func:`prepare_hub`) put the Hugging Face libraries in offline mode."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """One TCP connection to the Hub endpoint's host and port, within ``timeout`` seconds."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def prepare_hub() -> bool:
    """Make Hub access fail fast when there is no network; returns True when the process is offline.

    Called once per process (the answer is remembered). Switching to offline mode only takes effect for the
    libraries imported afterwards, which is why commands call this before importing datasets or lm-eval.
    """
    if "offline" not in _state:
        offline = is_offline() or not hub_reachable()
        _state["switched"] = offline and not is_offline()
        if _state["switched"]:
            print("note: the Hugging Face Hub is not reachable; using the local cache only", file=sys.stderr)
        if offline:
            for name in OFFLINE_VARIABLES:
                os.environ[name] = "1"
            _set_loaded_constants()
        _state["offline"] = offline
    return _state["offline"]


def tool_went_offline() -> bool:
    """Whether :func:`prepare_hub` found the Hub unreachable (as opposed to the user setting ``HF_HUB_OFFLINE``)."""
    return _state.get("switched", False)


def dataset_in_cache(repo_id: str) -> bool:
    """Whether a Hub dataset has anything in the local caches (``datasets``' own, or the hub file cache).

    Used offline to fail at once instead of importing datasets / lm-eval only to learn that it is not there.
    """
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or home / "hub")
    owner, _, name = repo_id.rpartition("/")
    candidates = [
        *datasets_cache.glob(f"{repo_id.replace('/', '___')}*"),
        *(datasets_cache.glob(f"{name}*") if not owner else []),
        hub_cache / f"datasets--{repo_id.replace('/', '--')}",
    ]
    return any(path.exists() for path in candidates)


def _set_loaded_constants() -> None:
    """The libraries read the variables at import: update the constants of those already imported."""
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_is_offline_mode"):
        transformers_hub._is_offline_mode = True
