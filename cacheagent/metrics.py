"""The agent's Prometheus metrics, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MODEL_STATES = ("NodeDownloadPending", "NodeDownloading", "NodeDownloaded", "NodeDownloadError")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.downloaded_bytes = Counter(
            "modeldepot_agent_downloaded_bytes", "Bytes received from model sources.", registry=r)
        self.downloads_in_flight = Gauge(
            "modeldepot_agent_downloads_in_flight", "Downloads running now.", registry=r)
        self.download_failures = Counter(
            "modeldepot_agent_download_failures", "Failed download attempts, by reason.", ["reason"], registry=r)
        self.models = Gauge(
            "modeldepot_agent_models", "LocalModelCaches selecting this node, by state.", ["state"], registry=r)
        self.store_used = Gauge("modeldepot_agent_store_used_bytes", "Bytes the node store holds.", registry=r)
        self.store_capacity = Gauge(
            "modeldepot_agent_store_capacity_bytes", "The node store's capacity (0: unlimited).", registry=r)
        self.verification_failures = Counter(
            "modeldepot_agent_verification_failures", "Models that failed a periodic re-hash.", registry=r)
        self.repairs = Counter(
            "modeldepot_agent_repairs", "Models taken out of the store for a re-fetch after verification found "
            "them damaged, by problem (corrupt, missing, size, no-blob, not-linked, extra, unreadable).",
            ["problem"], registry=r)
        self.repairs_deferred = Counter(
            "modeldepot_agent_repairs_deferred", "Repair attempts put off because the model was being read or "
            "written (each try counts; retried within seconds).", registry=r)
        self.reconcile_duration = Histogram(
            "modeldepot_agent_reconcile_duration_seconds", "Time for one reconcile pass.", registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.watch_relists = Counter(
            "modeldepot_agent_watch_relists", "Full re-lists after a watch fell too far behind (410 Gone).",
            registry=r)
        self.status_write_failures = Counter(
            "modeldepot_agent_status_write_failures", "Status writes that failed and will be retried.", registry=r)

    def observe_states(self, states) -> None:
        counts = dict.fromkeys(MODEL_STATES, 0)
        for s in states:
            counts[s.state] = counts.get(s.state, 0) + 1
        for state, n in counts.items():
            self.models.labels(state).set(n)

    def observe_usage(self, usage) -> None:
        self.store_used.set(usage.used)
        self.store_capacity.set(usage.capacity or 0)
