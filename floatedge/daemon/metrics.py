"""Every metric the server exports, declared here once; `prometheus-client` renders the text at `/metrics`.

Two families (`../shared/reference/daemon.md` §2):

* **Triton's names** where Triton has one (`triton-inference-server/server:docs/user_guide/metrics.md`,
  `triton-inference-server/core:src/metrics.cc`), labels `model` and `version`, so dashboards built for Triton
  work: `nv_inference_request_success`, `nv_inference_request_failure` (+ `reason`), `nv_inference_count`
  (images), `nv_inference_exec_count` (batches run), the cumulative microsecond counters
  `nv_inference_request_duration_us`, `nv_inference_queue_duration_us`, `nv_inference_compute_input_duration_us`,
  `nv_inference_compute_infer_duration_us`, `nv_inference_compute_output_duration_us`, and the gauge
  `nv_inference_pending_request_count`. prometheus-client's text writer appends `_total` to any family typed
  "counter" (exposition.py, "Munging from OpenMetrics into Prometheus format"), which would rename them, so these
  families are exposed untyped with Triton's exact sample names.
* **`floatedge_…`** for what Triton has no name for: the operating point, switches by reason and their time to
  effect, the calibrated CA/RA being delivered, latency against the SLO, swaps, batch sizes, and the device
  telemetry (power, temperatures, GPU/CPU load, throttling) that Triton cannot give on a Jetson (its GPU metrics
  come from DCGM, which Jetsons lack: `docs/user_guide/jetson.md`).
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from floatedge.bundle import robust_of

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5,
                   1.0, 2.5)
EFFECT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
TRITON_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (images; a batch of 8 counts 8)",
    "nv_inference_exec_count": "Number of model executions performed (batches run; dynamic batching merges requests)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds (receipt to response)",
    "nv_inference_queue_duration_us": "Cumulative time requests spent waiting to run, in microseconds",
    "nv_inference_compute_input_duration_us": "Cumulative time decoding and checking inputs, in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative time running the model, in microseconds",
    "nv_inference_compute_output_duration_us": "Cumulative time building outputs, in microseconds",
}
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
RECENT = 2048  # latencies kept for the recent p50/p99 against the SLO


class _TritonCollector:
    """Triton's per-model counters, kept as plain numbers under one lock and rendered on scrape."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.labels = {"model": "", "version": ""}
        self.values = dict.fromkeys(TRITON_COUNTERS, 0.0)
        self.failures = dict.fromkeys(FAILURE_REASONS, 0.0)
        self.pending = 0

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            values, failures, pending, labels = dict(self.values), dict(self.failures), self.pending, dict(self.labels)
        for name, doc in TRITON_COUNTERS.items():
            m = Metric(name, doc, "unknown")
            m.add_sample(name, labels, values[name])
            yield m
        m = Metric("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", "unknown")
        for reason, v in failures.items():
            m.add_sample("nv_inference_request_failure", {**labels, "reason": reason}, v)
        yield m
        g = GaugeMetricFamily("nv_inference_pending_request_count",
                              "Instantaneous number of pending requests awaiting execution", labels=list(labels))
        g.add_metric(list(labels.values()), pending)
        yield g


class _TelemetryCollector:
    """The latest device telemetry snapshot (floatedge.devices), as gauges; nothing when there is none."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if not snap:
            return
        specs = (("power_w", "floatedge_device_power_watts", "Power draw per rail in watts", "rail"),
                 ("temperatures_c", "floatedge_device_temperature_celsius", "Temperature per zone", "zone"))
        for key, name, doc, label in specs:
            values = snap.get(key) or {}
            if values:
                g = GaugeMetricFamily(name, doc, labels=[label])
                for k, v in values.items():
                    if v is not None:
                        g.add_metric([str(k)], float(v))
                yield g
        for key, name, doc in (("gpu_load", "floatedge_device_gpu_load_ratio", "GPU load, 0 to 1"),
                               ("cpu_load", "floatedge_device_cpu_load_ratio", "CPU load, 0 to 1"),
                               ("throttled", "floatedge_device_throttled", "1 while the device throttles its clocks")):
            v = snap.get(key)
            if v is not None:
                yield GaugeMetricFamily(name, doc, value=float(v))


class _GovernorCollector:
    """The governor's view after its last decision (floatedge/daemon/governor.py `Governor.status`), as gauges;
    nothing under another policy."""

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        st = self.status
        if not st:
            return
        ms = (("observed_ms", "floatedge_governor_observed_latency_seconds",
               "Observed latency at the budget's percentile, current point, last window"),
              ("predicted_ms", "floatedge_governor_predicted_latency_seconds_current",
               "Predicted latency at the budget's percentile, current point"),
              ("bound_ms", "floatedge_governor_budget_latency_seconds", "The latency bound the governor keeps"))
        for key, name, doc in ms:
            if st.get(key) is not None:
                yield GaugeMetricFamily(name, doc, value=st[key] / 1e3)
        for key, name, doc in (("slowdown", "floatedge_governor_slowdown",
                                "Estimated slowdown at the percentile: observed model-call time / profiled (Kalman)"),
                               ("rate_per_s", "floatedge_governor_arrival_rate", "Requests per second, last window")):
            if st.get(key) is not None:
                yield GaugeMetricFamily(name, doc, value=float(st[key]))
        yield GaugeMetricFamily("floatedge_governor_violation", "1 while no point meets the budget",
                                value=1.0 if st.get("violation") else 0.0)
        budget = st.get("budget") or {}
        if budget.get("floor") is not None:
            yield GaugeMetricFamily("floatedge_governor_robustness_floor", "The robustness floor (λ_n ≥ floor)",
                                    value=float(budget["floor"]))
        points = [p for p in st.get("predicted") or () if p.get("ms") is not None]
        if points:
            g = GaugeMetricFamily("floatedge_governor_predicted_latency_seconds",
                                  "Predicted latency at the budget's percentile, per operating point",
                                  labels=["lambda_n", "width"])
            for p in points:
                g.add_metric([f"{p['lambda_n']:g}", f"{p['width']:g}"], p["ms"] / 1e3)
            yield g


class Metrics:
    """The server's metrics in their own registry (served on the metrics port by `prometheus_client`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.triton = _TritonCollector()
        self.telemetry = _TelemetryCollector()
        self.registry.register(self.triton)
        self.registry.register(self.telemetry)
        r = self.registry
        self.info = Gauge("floatedge_model_info", "The bundle being served (value 1)",
                          ["model", "bundle", "architecture", "backend", "sha256"], registry=r)
        self.lambda_n = Gauge("floatedge_operating_point_lambda_n", "Current operating point: λ_n", registry=r)
        self.width = Gauge("floatedge_operating_point_width", "Current operating point: width", registry=r)
        self.pinned = Gauge("floatedge_operating_point_pinned", "1 while the operator pins the point", registry=r)
        self.switches = Counter("floatedge_switches", "Operating-point switches, by reason", ["reason"], registry=r)
        self.effect = Histogram("floatedge_switch_time_to_effect_seconds",
                                "From a switch being asked for to the new point serving", buckets=EFFECT_BUCKETS,
                                registry=r)
        self.accuracy = Gauge("floatedge_calibrated_accuracy",
                              "Accuracy the bundle's calibration table records at the current point (clean, "
                              "under the named attack, or robust: the lowest of the attacks); absent when the "
                              "point was not evaluated", ["kind"],
                              registry=r)
        self.latency = Histogram("floatedge_request_latency_seconds", "Inference request latency, receipt to response",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.slo = Gauge("floatedge_slo_latency_seconds", "The configured p99 latency objective (0: none)", registry=r)
        self.slo_violations = Counter("floatedge_slo_violations", "Requests slower than the latency objective",
                                      registry=r)
        self.swaps = Counter("floatedge_swaps", "Hot swaps of the bundle, by result", ["result"], registry=r)
        self.batch = Histogram("floatedge_batch_images", "Images per model execution", buckets=BATCH_BUCKETS,
                               registry=r)
        self.decisions = Counter("floatedge_policy_decisions", "Policy decisions that moved the point, by policy and "
                                 "the limit behind them", ["policy", "limit"], registry=r)
        self.governor = _GovernorCollector()
        r.register(self.governor)
        self._recent: deque[float] = deque(maxlen=RECENT)
        r.register(self._RecentCollector(self._recent))
        self._slo_s = 0.0

    class _RecentCollector:
        def __init__(self, recent: deque) -> None:
            self.recent = recent

        def collect(self) -> Iterator[Metric]:
            values = list(self.recent)
            if values:
                g = GaugeMetricFamily("floatedge_recent_latency_seconds",
                                      f"Latency quantiles over the last {RECENT} requests", labels=["quantile"])
                for q in (0.5, 0.9, 0.99):
                    g.add_metric([str(q)], float(np.quantile(values, q)))
                yield g

    # -- recording
    def set_model(self, model: str, version: str, bundle: str, architecture: str, backend: str, sha: str) -> None:
        with self.triton.lock:
            self.triton.labels = {"model": model, "version": version}
        self.info.clear()
        self.info.labels(model, bundle, architecture, backend, sha[:16]).set(1)

    def set_slo(self, seconds: float) -> None:
        self._slo_s = float(seconds)
        self.slo.set(self._slo_s)

    def set_point(self, point: Any, pinned: bool, row: dict | None) -> None:
        self.lambda_n.set(point.lambda_n)
        self.width.set(point.width)
        self.pinned.set(1 if pinned else 0)
        self.accuracy.clear()
        for k, v in (row or {}).items():
            if k.endswith("_acc") and isinstance(v, (int, float)):
                self.accuracy.labels(k[: -len("_acc")]).set(float(v))
        robust = robust_of(row or {})[0]  # kind="robust": the lowest measured attack, also for an older table
        if robust is not None:
            self.accuracy.labels("robust").set(robust)

    def switched(self, reason: str, seconds: float | None) -> None:
        self.switches.labels(reason).inc()
        if seconds is not None:
            self.effect.observe(seconds)

    def pending(self, delta: int) -> None:
        with self.triton.lock:
            self.triton.pending += delta

    def success(self, images: int, total_s: float, queue_s: float, input_s: float, infer_s: float,
                output_s: float) -> None:
        v = self.triton.values
        with self.triton.lock:
            v["nv_inference_request_success"] += 1
            v["nv_inference_count"] += images
            v["nv_inference_request_duration_us"] += total_s * 1e6
            v["nv_inference_queue_duration_us"] += queue_s * 1e6
            v["nv_inference_compute_input_duration_us"] += input_s * 1e6
            v["nv_inference_compute_infer_duration_us"] += infer_s * 1e6
            v["nv_inference_compute_output_duration_us"] += output_s * 1e6
        self.latency.observe(total_s)
        self._recent.append(total_s)
        if self._slo_s and total_s > self._slo_s:
            self.slo_violations.inc()

    def failure(self, reason: str) -> None:
        with self.triton.lock:
            self.triton.failures[reason if reason in self.triton.failures else "OTHER"] += 1

    def executed(self, images: int) -> None:
        with self.triton.lock:
            self.triton.values["nv_inference_exec_count"] += 1
        self.batch.observe(images)

    def recent_quantiles(self) -> dict[str, float]:
        values = list(self._recent)
        if not values:
            return {}
        return {f"p{int(q * 100)}_ms": round(float(np.quantile(values, q)) * 1e3, 3) for q in (0.5, 0.9, 0.99)}
