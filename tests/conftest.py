import os
from pathlib import Path

import pytest

# Real data lives beside the checkout (../shared/data) or where CLCPMT_DATA points; tests that need it skip without it.
SHARED_DATA = Path(os.environ.get("CLCPMT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "isic2018_ham10000").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set CLCPMT_DATA to the shared data folder)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    """Image caches of tests go to a temporary folder, never to the user's cache."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.getbasetemp() / "home"))
