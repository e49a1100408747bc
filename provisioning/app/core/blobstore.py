"""Where backup blobs live (docs/backup.md): a directory on the service's disk by default, an
S3-compatible bucket in production. The service stores blobs it cannot read (sealed on the
client); names are derived from device ids, never from content."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from e2ee_provisioning.core.config import Settings

__all__ = ["BlobNotFound", "BlobStore", "FileBlobStore", "S3BlobStore", "make_blob_store"]


class BlobNotFound(KeyError):
    pass


class BlobStore(Protocol):
    def put(self, name: str, data: bytes) -> None: ...

    def get(self, name: str) -> bytes: ...

    def delete(self, name: str) -> None: ...


class FileBlobStore:
    """One file per blob, written atomically (temporary file, fsync, rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return "<FileBlobStore %s>" % self.directory

    def put(self, name: str, data: bytes) -> None:
        tmp = self.directory / (name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / name)

    def get(self, name: str) -> bytes:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(name) from None

    def delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)


class S3BlobStore:
    """Blobs as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW), through boto3."""

    def __init__(self, bucket: str, endpoint_url: str | None = None, region: str = "us-east-1",
                 client: Any = None) -> None:
        import boto3
        self.bucket = bucket
        self._s3 = client or boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region)

    def __repr__(self) -> str:
        return "<S3BlobStore %s>" % self.bucket

    def put(self, name: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key="backups/" + name, Body=data)

    def get(self, name: str) -> bytes:
        from botocore.exceptions import ClientError
        try:
            return self._s3.get_object(Bucket=self.bucket, Key="backups/" + name)["Body"].read()  # type: ignore[no-any-return]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFound(name) from None
            raise

    def delete(self, name: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key="backups/" + name)


def make_blob_store(settings: Settings) -> BlobStore:
    if settings.backup_store == "s3":
        return S3BlobStore(settings.s3_bucket, settings.s3_endpoint_url, settings.s3_region)
    return FileBlobStore(settings.backup_dir or settings.data_dir / "backups")
