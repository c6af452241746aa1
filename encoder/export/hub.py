"""Upload an export to the Hugging Face Hub, or say clearly why not (offline), without hanging."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


class HubUnavailable(RuntimeError):
    """The hub cannot be reached (offline mode or no connection); the export itself is complete."""


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_online(timeout: float = 5.0) -> None:
    """Raise HubUnavailable in offline mode or when the endpoint does not accept a TCP connection in `timeout` s."""
    if _offline():
        raise HubUnavailable("HF_HUB_OFFLINE is set")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise HubUnavailable(f"cannot reach {host}:{port} ({err})") from None


def push_to_hub(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                timeout: float = 5.0) -> str:
    """Create `repo_id` if needed and upload `folder` (one commit); returns the commit URL."""
    check_online(timeout)
    from huggingface_hub import HfApi  # noqa: PLC0415  (only when actually uploading)

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                             commit_message=f"Upload {Path(folder).name} (longenc export)")
    return str(getattr(info, "commit_url", info))
