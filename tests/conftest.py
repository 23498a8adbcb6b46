"""Shared test fixtures. `../shared/` (reference checkpoints, docs) sits beside the checkout in CI; on a user's
fresh clone it is absent and the tests that need it skip, saying so."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (it ships beside the checkout in CI only)")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir):
    return shared_dir / "fixtures"
