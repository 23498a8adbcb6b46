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


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A small synthetic set (real mp4s and JPEG folders; 2 train / 1 val video per class), written once."""
    from dataset import ensure_synthetic
    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0, videos_per_class=2, val_per_class=1,
                            frames_per_class=(1, 1), charades_videos=(6, 3))


@pytest.fixture(scope="session")
def broken_data(tmp_path_factory):
    """Deliberately broken files (zero-byte, truncated, garbage, too short, missing, bad frame folders)."""
    from dataset import write_broken
    return write_broken(tmp_path_factory.mktemp("broken"), seed=0)


def failing_once(read, failures):
    """`read` that raises a VideoReadError on its first call (a passing network error) and appends that call's
    first argument to `failures`; later calls read."""
    from dataset.video_io import VideoReadError

    def read_unless_first(target, *args, **kwargs):
        if not failures:
            failures.append(target)
            raise VideoReadError(f"{target}: a passing network error")
        return read(target, *args, **kwargs)
    return read_unless_first
