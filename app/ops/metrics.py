"""Prometheus metrics. Job counts and training speed are read from the database at scrape time,
so every API replica reports the same truth."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from app.db import session_scope
from app.models import JOB_STATUSES, Job, JobStatus

REGISTRY = CollectorRegistry()

REQUESTS = Counter("charrnn_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY)
REQUEST_SECONDS = Histogram(
    "charrnn_http_request_seconds", "HTTP request latency", ["method", "route"], registry=REGISTRY
)
GENERATION_SECONDS = Histogram(
    "charrnn_generation_seconds",
    "POST /generate latency (non-streaming)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
GENERATED_CHARS = Counter("charrnn_generated_chars_total", "characters generated", registry=REGISTRY)


class JobCollector:
    def collect(self):
        jobs = GaugeMetricFamily("charrnn_jobs", "jobs by status", labels=["status"])
        speed = GaugeMetricFamily("charrnn_training_chars_per_second", "sum over running jobs")
        try:
            with session_scope() as session:
                counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
                running = session.scalars(select(Job.progress).where(Job.status == JobStatus.RUNNING)).all()
        except Exception:  # a scrape must not fail because the database is briefly away
            return
        for status in JOB_STATUSES:
            jobs.add_metric([status.value], counts.get(status, 0))
        speed.add_metric([], sum((p or {}).get("chars_per_second") or 0.0 for p in running))
        yield jobs
        yield speed


REGISTRY.register(JobCollector())
