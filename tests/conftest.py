import pytest  # noqa: E402
from cloud_servers import *  # noqa: F401,F403
from flowrunner import FlowRunner  # noqa: E402
from s3_server import *  # noqa: F401,F403


@pytest.fixture
def runner(tmp_path):
    """A FlowRunner in a private directory: its own datastore and default cache."""
    return FlowRunner(tmp_path / "work")
