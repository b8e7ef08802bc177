"""Hugging Face hub ids (`Qwen/Qwen2-7B-Instruct`) as model paths: the local snapshot directory.

A name that is not an existing path but has the `org/name` shape of a hub id is looked
up in the local Hugging Face cache first (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
~/.cache/huggingface/hub; `huggingface_hub` reads them), and downloaded into it only
when it is not there and the hub is reachable (not with `HF_HUB_OFFLINE=1`). Only the
files this project reads are fetched: safetensors weights, JSON configs and tokenizer
files, never pickles. Everything downstream then sees an ordinary checkpoint directory.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from selflengthen_jax.checkpoint.hf_import import CheckpointError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
DOWNLOADED = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "*.tiktoken"]


def is_hub_id(name: str) -> bool:
    """`org/name` that names no existing local path."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and not Path(name).exists()


def resolve_model(name: str) -> str:
    """A local directory for `name`: `name` itself unless it is a hub id, else its snapshot.

    Raises CheckpointError (one line) when a hub id is neither cached nor downloadable.
    """
    if not name or not is_hub_id(name):
        return name
    try:
        return snapshot_download(name, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    where = f"{name} is not a local directory, and as a Hugging Face hub id it is not in the cache " \
            f"{constants.HF_HUB_CACHE}"
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"{where} (HF_HUB_OFFLINE is set, so it was not downloaded)")
    print(f"{name}: not in the Hugging Face cache; downloading it into {constants.HF_HUB_CACHE}",
          file=sys.stderr)
    try:
        return snapshot_download(name, allow_patterns=DOWNLOADED)
    except (LocalEntryNotFoundError, HfHubHTTPError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}, and downloading it failed: {reason}") from None
