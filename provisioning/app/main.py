"""The FastAPI application: create_app(settings) wires settings, database (migrated or checked at startup),
metrics, rate limits and the routers."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from prometheus_client import ProcessCollector

from e2ee_host.fleet_ca import FileCAKeystore
from e2ee_provisioning.api import openapi
from e2ee_provisioning.api.channel import ServiceChannel, retire_revoked_claim
from e2ee_provisioning.api.routes import (
    backups, ca, claims, devices, enrollment, groups, health, keys, links, me, metrics, relay, reports, revocations,
)
from e2ee_provisioning.core.authority import ensure_revocation_list
from e2ee_provisioning.core.bodylimit import BodyLimit, RouteLimit
from e2ee_provisioning.core.urlguard import RefuseNul
from e2ee_provisioning.core.blobstore import make_blob_store
from e2ee_provisioning.core.relay import RelayBridge
from e2ee_provisioning.core.broker import BrokerAdmin
from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.core.db import check_migrations, make_engine, make_sessionmaker, run_migrations
from e2ee_provisioning.core.gauges import BrokerGauges, DatabaseGauges
from e2ee_provisioning.core.metrics import Metrics
from e2ee_provisioning.core.proxies import TrustedProxies
from e2ee_provisioning.core.ratelimit import make_buckets, redis_client
from e2ee_provisioning.core.requestmetrics import RequestMetrics

__all__ = ["SHARE_GROUP", "admin_client_id", "create_app"]

# The shared-subscription group of every replica's broker admin (docs/provisioning.md, "Replicas"):
# each inbox message and service-channel request goes to one replica of the group.
SHARE_GROUP = "e2ee-provisioning"


def admin_client_id(settings: Settings) -> str:
    """The broker admin's client id: one per replica (E2EE_PROV_REPLICA_ID), the same at each of
    its restarts, so its persistent session (what the broker handed it and it had not stored) is
    found again; two replicas with one id would take the session from each other at every reconnect."""
    return "e2ee-provisioning-" + settings.replica_id if settings.replica_id else "e2ee-provisioning"


def _with_sites(central: Any, sites: str) -> Any:
    """The central admin and one admin per site broker (settings.broker_sites, JSON)."""
    from e2ee_host.broker import BrokerError, DynSec, SiteBrokers
    try:
        listed = json.loads(sites)
        admins = [DynSec(str(s["host"]), int(s["port"]), str(s["user"]), str(s["password"]),
                         tls_ca=str(s["tls_ca"]) if s.get("tls_ca") else None) for s in listed]
    except (ValueError, TypeError, KeyError, AttributeError, BrokerError) as e:
        central.close()
        raise RuntimeError("E2EE_PROV_BROKER_SITES: %s" % type(e).__name__) from None
    return SiteBrokers(central, admins)


def create_app(settings: Settings | None = None, broker: BrokerAdmin | None = None) -> FastAPI:
    """The service; `broker` (e.g. e2ee_host.broker's dynamic-security admin) receives enrolled
    and revoked devices, None runs without a broker."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.sqlalchemy_url, settings.sqlite_synchronous)
        if settings.migrate_at_startup:
            run_migrations(engine)
        else:  # replicas: the one-off migration ran before them (docs/deployment.md)
            check_migrations(engine)
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        owned = None  # a broker admin made here (not one passed in) is closed here
        relay = RelayBridge(app.state.sessionmaker, app.state.metrics)
        jetstream = None
        if settings.relay_jetstream_url:  # the relay consumes JetStream, not the admin's MQTT session
            from e2ee_provisioning.core.jetstream import JetStreamRelay
            jetstream = JetStreamRelay(settings.relay_jetstream_url, settings.relay_jetstream_stream,
                                       settings.relay_jetstream_durable, relay.on_inbox,
                                       ack_wait=settings.relay_jetstream_ack_wait).start()
        if app.state.broker is None and settings.broker_admin_user:
            from e2ee_host.broker import DynSec
            tls_ca = settings.broker_admin_tls_ca
            owned = app.state.broker = DynSec(
                settings.broker_admin_host, settings.broker_admin_port, settings.broker_admin_user,
                settings.broker_admin_password.get_secret_value(), client_id=admin_client_id(settings),
                share_group=SHARE_GROUP, on_inbox=relay.on_inbox if jetstream is None else None,
                tls_ca=str(tls_ca) if tls_ca else None, on_request=ServiceChannel(app).on_request,
                observe=app.state.metrics.observe_broker)
            if settings.broker_sites.get_secret_value():
                owned = app.state.broker = _with_sites(owned, settings.broker_sites.get_secret_value())
        try:
            with app.state.sessionmaker() as session:
                ensure_revocation_list(session, app.state.ca)
            yield
        finally:
            if jetstream is not None:  # before the database goes: its last store is acknowledged
                jetstream.close()
            if owned is not None:  # before the database goes: the relay's last store finishes first
                owned.close()
                app.state.broker = None
            engine.dispose()
            if app.state.redis is not None:
                app.state.redis.close()

    app = FastAPI(title="e2ee-iot provisioning", version="0.1.0", lifespan=lifespan,
                  description="Device registry, enrollment claims and key directory (docs/provisioning.md)")
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.metrics.register(DatabaseGauges(app.state, app.state.metrics))
    app.state.metrics.register(BrokerGauges(app.state))
    ProcessCollector(registry=app.state.metrics.registry)
    # rate limits in the process or, for replicas, in Redis (core/ratelimit.py); client addresses
    # from X-Forwarded-For of trusted proxies only (core/proxies.py)
    app.state.proxies = TrustedProxies.parse(settings.trusted_proxies)
    redis = app.state.redis = (redis_client(settings.redis_url.get_secret_value())
                               if settings.rate_limit_store == "redis" else None)
    app.state.bundle_buckets = make_buckets(settings, redis, "bundle", settings.bundle_rate_capacity,
                                            settings.bundle_rate_per_second)
    app.state.enroll_buckets = make_buckets(settings, redis, "enroll", settings.enroll_rate_capacity,
                                            settings.enroll_rate_per_second)
    # the MQTT service channel (api/channel.py): requests per device topic, as enrollments per address
    app.state.channel_buckets = make_buckets(settings, redis, "channel", settings.enroll_rate_capacity,
                                             settings.enroll_rate_per_second)
    app.state.report_buckets = make_buckets(settings, redis, "report", reports.REPORT_CAPACITY,  # per device
                                            reports.REPORTS_PER_SECOND)
    app.state.ca = FileCAKeystore(settings.ca_path)
    app.state.broker = broker
    app.state.claim_revoked_hooks = []  # routes/claims.py on_claim_revoked()
    claims.on_claim_revoked(app, retire_revoked_claim(app))  # its zero-touch broker credential goes
    app.state.blobs = make_blob_store(settings)
    routers = [module.router for module in (health, metrics, ca, claims, enrollment, devices, me, keys, revocations,
                                            backups, links, relay, groups, reports)]
    for router in routers:
        app.include_router(router)
    # security schemes, tags and the refusals of each route in /openapi.json (api/openapi.py)
    openapi.install(app, [r for router in routers for r in router.routes])
    # every body capped while it streams in, before any route reads it (finding 9, D19)
    app.add_middleware(RefuseNul)  # no NUL reaches a query (finding 11)
    app.add_middleware(BodyLimit, default=settings.max_upload_bytes, routes=_body_limits(settings))
    # outermost: times the refusals too (their route found among the routers' own routes)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics, routes=[r for router in routers for r in router.routes])
    return app


def _body_limits(settings: Settings) -> list[RouteLimit]:
    """Routes whose bodies may be larger than E2EE_PROV_MAX_UPLOAD_BYTES: the backup upload
    (E2EE_PROV_MAX_BACKUP_BYTES), found by its endpoint so a changed path cannot lose the cap
    (the routers are included without a prefix: their paths are the app's)."""
    larger = {backups.put_backup: settings.max_backup_bytes}
    return [RouteLimit(frozenset(route.methods), route.path_regex, larger[route.endpoint])
            for route in backups.router.routes if isinstance(route, APIRoute) and route.endpoint in larger]
