"""Service settings (pydantic-settings), read from E2EE_PROV_* environment variables or a .env file.

The environment is production unless E2EE_PROV_ENVIRONMENT says otherwise (docs/decisions.md D19),
and outside development the service refuses to start with the default operator key, so a
deployment cannot run with the key printed in this file. DatabaseSettings is the part the Alembic
command needs: migrating a database takes no operator key.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from e2ee_provisioning.core.proxies import TrustedProxies

__all__ = ["DEFAULT_OPERATOR_KEY", "DatabaseSettings", "Settings", "hash_api_key"]

# The development operator key; refused unless E2EE_PROV_ENVIRONMENT=development (an opt-in).
DEFAULT_OPERATOR_KEY = "changethis"


def hash_api_key(key: str) -> str:
    """SHA-256 hex of an operator API key: what the service keeps and compares (keys are random
    high-entropy tokens, so a fast hash is enough; no salt or KDF needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


class DatabaseSettings(BaseSettings):
    """Where the database is: all that `alembic -c provisioning/alembic.ini upgrade head` reads."""
    model_config = SettingsConfigDict(env_prefix="E2EE_PROV_", env_file=".env", extra="ignore")

    # Directory of the embedded SQLite database (and of the CA keystore).
    data_dir: Path = Path("provisioning-data")
    # SQLAlchemy URL; empty means SQLite at data_dir/provisioning.db. Production:
    # postgresql+psycopg://user:password@host/dbname
    database_url: str = ""
    # SQLite only: PRAGMA synchronous. "full" (default) fsyncs the WAL at every commit (about
    # 1.3 ms on this project's VM, which caps SQLite near 700 writes/s); "normal" fsyncs at
    # checkpoints only: the database stays consistent, but an OS crash or power loss can undo
    # the last commits (a one-time prekey handed out again, a spent signed request accepted
    # once more). A process crash loses nothing either way (docs/performance.md).
    sqlite_synchronous: Literal["full", "normal"] = "full"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return "sqlite:///%s" % (self.data_dir / "provisioning.db")


class Settings(DatabaseSettings):
    # production unless a development service opts in (E2EE_PROV_ENVIRONMENT=development)
    environment: Literal["development", "staging", "production"] = "production"
    # Migrations at startup: the service upgrades its database before it listens (one process,
    # development). Several replicas: false, and the one-off `python -m e2ee_provisioning.migrate`
    # runs them once before any replica starts (docs/deployment.md); a replica then refuses a
    # database that is not at the newest revision.
    migrate_at_startup: bool = True
    # HTTPS in the service (uvicorn): the server certificate chain and its private key, PEM files,
    # both or neither. Unset: plain HTTP (development, or a TLS proxy on the same host).
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    # Operator API key in clear (hashed at load; never stored), and/or SHA-256 hex hashes of keys
    # (comma-separated), so the clear key need not sit in the service's environment at all.
    operator_api_key: SecretStr | None = SecretStr(DEFAULT_OPERATOR_KEY)
    operator_api_key_hashes: str = ""
    # Device-signed requests: allowed clock skew of the signed timestamp, in seconds.
    request_max_skew: int = Field(300, ge=1, le=3600)
    # One-time prekeys: most one device may have stored, and the level below which the device is
    # told to replenish (docs/provisioning.md, key directory).
    max_one_time_prekeys: int = Field(100, ge=1, le=10_000)
    replenish_threshold: int = Field(10, ge=0)
    # Bundle fetches: token bucket per client (capacity, refill per second).
    bundle_rate_capacity: float = Field(30.0, gt=0)
    bundle_rate_per_second: float = Field(1.0, gt=0)
    # Largest request body accepted on uploads, bytes (100 prekeys in JSON take about 9 KB).
    max_upload_bytes: int = Field(32_768, ge=1024)
    # Fleet CA keystore (FileCAKeystore JSON, mode 0600); empty means data_dir/fleet-ca.json.
    ca_keystore_path: Path | None = None
    # Lifetime of issued device certificates, seconds (default 365 days).
    certificate_lifetime: int = Field(365 * 86_400, ge=3600, le=10 * 366 * 86_400)
    # Lifetime of an enrollment challenge, seconds.
    challenge_lifetime: int = Field(120, ge=10, le=3600)
    # Factory keys for hardware binding evidence (docs/provisioning.md, "Enrollment"): hex of 32
    # bytes each, comma-separated (several while a factory key is being rotated). Empty: claims
    # that require hardware evidence cannot be spent.
    factory_keys: SecretStr = SecretStr("")
    # Enrollment (challenges and enrollments): token bucket per client address.
    enroll_rate_capacity: float = Field(20.0, gt=0)
    enroll_rate_per_second: float = Field(2.0, gt=0)
    # Registration lock: failed PIN attempts after which only an operator can clear the lock.
    registration_lock_attempts: int = Field(5, ge=1, le=100)
    # Broker address handed to enrolled devices with their MQTT credentials (issue: messaging);
    # empty host: enrollment issues no MQTT credentials.
    mqtt_host: str = ""
    mqtt_port: int = Field(8883, ge=1, le=65535)
    # The broker's dynamic-security admin the service drives (docs/broker.md): host, port, user and
    # password of its admin client; empty user: the service drives no broker.
    broker_admin_host: str = "127.0.0.1"
    broker_admin_port: int = Field(1883, ge=1, le=65535)
    broker_admin_user: str = ""
    broker_admin_password: SecretStr = SecretStr("")
    # CA file to trust for the admin's TLS connection (hostname checked against broker_admin_host);
    # unset: plain MQTT (the development broker). The production broker listens on TLS only.
    broker_admin_tls_ca: Path | None = None
    # Site brokers bridged to that (central) broker (docs/broker.md, "Site brokers bridged to the
    # gateway"): a JSON list of their admins, [{"host": ..., "port": ..., "user": ..., "password":
    # ..., "tls_ca": ... (optional)}]; devices' credentials are created and disabled on each too.
    broker_sites: SecretStr = SecretStr("")
    # The relay's source (docs/broker.md, "Relay over JetStream"): empty, the broker admin's MQTT
    # session (the single-node default); a NATS URL, the durable pull consumer relay_jetstream_durable
    # on the stream relay_jetstream_stream there (the stream is the operator's: made beforehand).
    relay_jetstream_url: str = ""
    relay_jetstream_stream: str = "E2EE_INBOX"
    relay_jetstream_durable: str = "e2ee-relay"
    # seconds before a message the consumer fetched and did not acknowledge comes again (a replica
    # that died, an acknowledgement lost while the NATS server restarted)
    relay_jetstream_ack_wait: float = Field(30.0, ge=1, le=3600)
    # Encrypted backups (docs/backup.md): where blobs go ("file": backup_dir, default
    # data_dir/backups; "s3": an S3-compatible bucket through boto3, credentials from the usual
    # AWS_* variables), the largest blob, and wrong fetch attempts before the backup locks.
    backup_store: Literal["file", "s3"] = "file"
    backup_dir: Path | None = None
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    max_backup_bytes: int = Field(4 * 1024 * 1024 + 64, ge=1024)
    backup_fetch_attempts: int = Field(10, ge=1, le=1000)
    # Replicas (docs/provisioning.md, "Replicas"): this process's name among the service's
    # processes on one database and broker, unique among them and the same at each of its restarts:
    # its broker admin client id is e2ee-provisioning-<replica_id>, a persistent session whose share
    # of the relay and service channel waits at the broker while it is down. Empty: the single
    # service's "e2ee-provisioning".
    replica_id: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,48}$")
    # Rate limits' store: "memory" (per process; N replicas allow N times each rate) or "redis"
    # (one bucket per client for every replica, at redis_url; a Redis that does not answer falls
    # back to the process's own buckets). redis_url may hold a password.
    rate_limit_store: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # Prefix of the rate limits' Redis keys (one per deployment sharing a Redis).
    rate_limit_prefix: str = Field("e2ee:rl:", max_length=64)
    # Reverse proxies whose X-Forwarded-For is believed (core/proxies.py): addresses or CIDR
    # networks, comma-separated. Empty: the header is ignored, the client is the TCP peer.
    trusted_proxies: str = ""
    # Log lines (python -m e2ee_provisioning): "text" or "json", one object per line (core/logs.py).
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        key = self.operator_api_key.get_secret_value() if self.operator_api_key else None
        if self.environment != "development" and key == DEFAULT_OPERATOR_KEY:
            raise ValueError(
                "E2EE_PROV_OPERATOR_API_KEY is the default development key; set a random key "
                "(or E2EE_PROV_OPERATOR_API_KEY_HASHES) for %s, or opt in to a development service "
                "with E2EE_PROV_ENVIRONMENT=development" % self.environment)
        if not self.operator_key_hashes():
            raise ValueError("no operator API key configured")
        self.factory_key_list()
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("E2EE_PROV_TLS_CERTFILE and E2EE_PROV_TLS_KEYFILE go together: set both or neither")
        TrustedProxies.parse(self.trusted_proxies)
        if self.backup_store == "s3" and not self.s3_bucket:
            raise ValueError("E2EE_PROV_BACKUP_STORE=s3 needs E2EE_PROV_S3_BUCKET")
        return self

    def operator_key_hashes(self) -> frozenset[str]:
        """SHA-256 hex of every accepted operator key."""
        hashes = {h.strip().lower() for h in self.operator_api_key_hashes.split(",") if h.strip()}
        if self.operator_api_key is not None and self.operator_api_key.get_secret_value():
            hashes.add(hash_api_key(self.operator_api_key.get_secret_value()))
        return frozenset(hashes)

    def factory_key_list(self) -> list[bytes]:
        """The factory keys as bytes (parse errors name the position, never the key)."""
        keys = []
        for i, part in enumerate(p.strip() for p in self.factory_keys.get_secret_value().split(",")):
            if not part:
                continue
            try:
                key = bytes.fromhex(part)
            except ValueError:
                raise ValueError("E2EE_PROV_FACTORY_KEYS entry %d is not hex" % (i + 1)) from None
            if len(key) != 32:
                raise ValueError("E2EE_PROV_FACTORY_KEYS entry %d is not 32 bytes" % (i + 1))
            keys.append(key)
        return keys

    @property
    def ca_path(self) -> Path:
        return self.ca_keystore_path or self.data_dir / "fleet-ca.json"
