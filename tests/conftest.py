"""Shared test setup: import path, local data mirror, offline tiktoken, seeds, and a network guard.

Every test runs offline. The data the tests read comes from a local mirror directory named by the environment
variable NANOVERSE_DATA (CI points it at ../shared/data; if unset, ../shared/data beside the repository is used
when it exists). Tests that need the mirror are skipped when there is none.
"""

import hashlib
import os
import random
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# GPT-2's tokenizer files, as tiktoken downloads them (URL -> expected sha256).
GPT2_FILES = {
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}


def _find_data_mirror():
    candidates = [os.environ.get("NANOVERSE_DATA"), ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


DATA_MIRROR = _find_data_mirror()


def _offline_tiktoken_cache():
    """Fill a private tiktoken cache with GPT-2's files from the mirror, so get_encoding("gpt2") never downloads.

    tiktoken caches each file under TIKTOKEN_CACHE_DIR by the sha1 of its download URL and checks its sha256.
    """
    if DATA_MIRROR is None:
        return
    cache = Path(tempfile.mkdtemp(prefix="nanoverse-tiktoken-"))
    for name, (url, sha256) in GPT2_FILES.items():
        source = DATA_MIRROR / "gpt2" / name
        if not source.is_file() or hashlib.sha256(source.read_bytes()).hexdigest() != sha256:
            return
        shutil.copyfile(source, cache / hashlib.sha1(url.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


def pytest_configure(config):
    if DATA_MIRROR is not None:
        os.environ["NANOVERSE_DATA"] = str(DATA_MIRROR)  # scripts run in subprocesses see it too
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    _offline_tiktoken_cache()


# ----------------------------------------------------------------------------------------------------------------------
# No test may reach the internet: connections to anything but this machine fail loudly.

_real_connect = socket.socket.connect
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


def _guarded_connect(sock, address):
    if isinstance(address, tuple) and str(address[0]) not in _LOCAL_HOSTS and not str(address[0]).startswith("127."):
        raise RuntimeError(f"tests must not use the network (tried to connect to {address!r})")
    return _real_connect(sock, address)


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)


@pytest.fixture
def data_dir():
    """The local data mirror (see ../shared/data/README.md); tests that need it are skipped without it."""
    if DATA_MIRROR is None:
        pytest.skip("no local data mirror: set NANOVERSE_DATA to the shared data directory")
    return DATA_MIRROR


@pytest.fixture
def gpt2_encoding():
    """tiktoken's GPT-2 encoding, loaded offline from the mirror's encoder.json and vocab.bpe."""
    if "TIKTOKEN_CACHE_DIR" not in os.environ or DATA_MIRROR is None:
        pytest.skip("GPT-2 tokenizer files not found in the local data mirror")
    import tiktoken

    return tiktoken.get_encoding("gpt2")
