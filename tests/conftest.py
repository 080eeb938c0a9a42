"""Real components for tests: a SeaweedFS S3 server, a local Ray, the shared benchmark data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from s3server import SeaweedS3  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests need ../shared/data beside the project")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> SeaweedS3:
    """One SeaweedFS server for the session; its AWS_* settings are exported like a user would."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    old = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3):
    """A local 2-CPU Ray, started after the S3 settings exist so workers inherit them."""
    import ray

    from taskray.core.raycluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


_bucket_counter = iter(range(10**6))


@pytest.fixture
def bucket(s3) -> str:
    """A fresh, empty bucket per test."""
    return s3.make_bucket(f"test-{os.getpid()}-{next(_bucket_counter)}")
