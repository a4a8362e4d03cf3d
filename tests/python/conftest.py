import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corecast_harness import RedisServer  # noqa: E402


@pytest.fixture
def redis_server():
    """A fresh redis-server on a free loopback port, killed after the test."""
    with RedisServer() as redis:
        yield redis
