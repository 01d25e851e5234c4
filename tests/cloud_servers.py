"""Pytest fixtures for GCS and Azure Blob endpoints on 127.0.0.1, over real HTTP.

* GCS: gcp-storage-emulator (PyPI, the ``test`` extra), started by
  gcs_emulator.py, which adds the ``ifGenerationMatch`` preconditions the
  emulator lacks.
* Azure: Azurite (npm), installed by ``make install`` into .tools/ and started
  as ``azurite-blob --inMemoryPersistence``.

Each server is a subprocess (per xdist worker, on a free port), so a test can
stop one. Where an emulator cannot start, its tests skip with the reason.
conftest.py pulls these in with ``from cloud_servers import *``.

Fixtures:

* ``gcs_server`` / ``azure_server`` (session): ``.endpoint_url``; ``.env``: the
  variables a client (or a flow in a subprocess) needs.
* ``gcs_env`` / ``azure_env`` (function): a fresh bucket / container, and the
  process environment pointed at it for the test's duration; ``.env``,
  ``.url(prefix)``, ``.client`` (google-cloud-storage Client / azure
  ContainerClient).
* ``own_gcs_server`` / ``own_azure_server`` (function): a server of the
  test's own, which it may ``.stop()``.
"""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest

__all__ = [
    "CloudServer",
    "CloudEnv",
    "gcs_server",
    "azure_server",
    "gcs_env",
    "azure_env",
    "own_gcs_server",
    "own_azure_server",
    "start_gcs_server",
    "start_azure_server",
    "AZURITE",
    "dead_env",
]

TESTS_DIR = Path(__file__).parent
AZURITE = TESTS_DIR.parent / ".tools" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented by Microsoft)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT = 30.0

# Host settings that would otherwise leak into the tests' clients.
_SCRUBBED = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_CONNECTION_STRING",
    "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class CloudServer:
    kind: str  # "gcs" or "azure"
    endpoint_url: str
    env: Dict[str, str]
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)
    log: Optional[Path] = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class CloudEnv:
    server: CloudServer
    env: Dict[str, str]
    name: str  # bucket or container
    client: Any

    def url(self, prefix: str = "") -> str:
        scheme = "gs://" if self.server.kind == "gcs" else "azure://"
        prefix = prefix.strip("/")
        return "%s%s/%s" % (scheme, self.name, prefix) if prefix else scheme + self.name


def _start(kind, cmd, port, log_dir: Path, env=None, cwd=None) -> subprocess.Popen:
    log = log_dir / ("%s-%d.log" % (kind, port))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _listening(port):
            return proc
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
    pytest.skip("the %s emulator did not start on port %d: %s" % (kind, port, tail.strip()))


def start_gcs_server(log_dir: Path) -> CloudServer:
    try:
        import gcp_storage_emulator  # noqa: F401
        import google.cloud.storage  # noqa: F401
    except ImportError as err:
        pytest.skip(
            "GCS tests need the test extra (gcp-storage-emulator, google-cloud-storage): %s" % err
        )
    port = _free_port()
    cmd = [sys.executable, str(TESTS_DIR / "gcs_emulator.py"), str(port)]
    proc = _start("gcs", cmd, port, log_dir)
    endpoint = "http://127.0.0.1:%d" % port
    env = {"STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": "memoize-test"}
    return CloudServer("gcs", endpoint, env, proc, log_dir)


def _azurite_connection_string(endpoint: str) -> str:
    return "DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;" % (
        AZURITE_ACCOUNT,
        AZURITE_KEY,
        endpoint,
    )


def start_azure_server(log_dir: Path) -> CloudServer:
    try:
        import azure.storage.blob  # noqa: F401
    except ImportError as err:
        pytest.skip("Azure tests need the test extra (azure-storage-blob): %s" % err)
    if not AZURITE.exists():
        pytest.skip("Azurite is not installed in %s: run `make install`" % AZURITE.parent.parent)
    if shutil.which("node") is None:
        pytest.skip("Azurite needs node, which is not on PATH")
    port = _free_port()
    cmd = [
        str(AZURITE),
        "--inMemoryPersistence",
        "--extentMemoryLimit",
        "512",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
        "--silent",
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
    ]
    proc = _start("azure", cmd, port, log_dir, cwd=str(log_dir))
    endpoint = "http://127.0.0.1:%d/%s" % (port, AZURITE_ACCOUNT)
    env = {"METAFLOW_MEMOIZE_AZURE_CONNECTION_STRING": _azurite_connection_string(endpoint)}
    return CloudServer("azure", endpoint, env, proc, log_dir)


def dead_env(kind: str) -> Dict[str, str]:
    """The environment of a client pointed at a closed local port."""
    endpoint = "http://127.0.0.1:%d" % _free_port()
    if kind == "gcs":
        return {"STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": "memoize-test"}
    connection = _azurite_connection_string(endpoint + "/" + AZURITE_ACCOUNT)
    return {"METAFLOW_MEMOIZE_AZURE_CONNECTION_STRING": connection}


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[CloudServer]:
    server = start_gcs_server(tmp_path_factory.mktemp("gcs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory) -> Iterator[CloudServer]:
    server = start_azure_server(tmp_path_factory.mktemp("azure"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_gcs_server(tmp_path) -> Iterator[CloudServer]:
    server = start_gcs_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_azure_server(tmp_path) -> Iterator[CloudServer]:
    server = start_azure_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def _apply(monkeypatch: pytest.MonkeyPatch, env: Dict[str, str]) -> None:
    for name in _SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def gcs_env_for(server: CloudServer, monkeypatch: pytest.MonkeyPatch) -> CloudEnv:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    _apply(monkeypatch, server.env)
    client = storage.Client(project="memoize-test", credentials=AnonymousCredentials())
    bucket = "memoize-test-%s" % uuid.uuid4().hex[:12]
    client.create_bucket(bucket)
    env = dict(server.env, METAFLOW_DATASTORE_SYSROOT_GS="gs://%s/metaflow" % bucket)
    return CloudEnv(server, env, bucket, client)


def azure_env_for(server: CloudServer, monkeypatch: pytest.MonkeyPatch) -> CloudEnv:
    from azure.storage.blob import BlobServiceClient

    _apply(monkeypatch, server.env)
    service = BlobServiceClient.from_connection_string(
        server.env["METAFLOW_MEMOIZE_AZURE_CONNECTION_STRING"]
    )
    container = "memoize-test-%s" % uuid.uuid4().hex[:12]
    client = service.create_container(container)
    env = dict(server.env, METAFLOW_DATASTORE_SYSROOT_AZURE="%s/metaflow" % container)
    return CloudEnv(server, env, container, client)


@pytest.fixture
def gcs_env(gcs_server, monkeypatch) -> Iterator[CloudEnv]:
    env = gcs_env_for(gcs_server, monkeypatch)
    yield env
    # the emulator keeps everything in memory, and rewrites its index of every
    # object on each write: give it back (a worker runs one test at a time)
    try:
        urllib.request.urlopen(gcs_server.endpoint_url + "/wipe", timeout=10).close()
    except OSError:
        pass


@pytest.fixture
def azure_env(azure_server, monkeypatch) -> Iterator[CloudEnv]:
    env = azure_env_for(azure_server, monkeypatch)
    yield env
    try:
        env.client.delete_container()
    except Exception:
        pass
