"""Metrics: counters, gauges and latency histograms of a mount.

The daemon counts as it goes (``inc``, ``observe``: a dictionary update, no
I/O, safe inside an atomic step) and registers gauges as callables read at
scrape time. ``snapshot`` gives one JSON-able dict, served on the mount
root's ``user.fencefs.stats`` attribute (``fencefs stats``); with
``--metrics ADDR:PORT`` the same numbers are served in Prometheus's text
format by ``prometheus_client`` (the optional extra ``fencefs[metrics]``),
on a thread of its own, which reads them under the GIL (copies are taken
with one C-level call each, never while a handler is half-way through a
change).

This module imports no FUSE and no trio: it is shared by the daemon and the
command line.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Labels = tuple[tuple[str, str], ...]

# Latency buckets, in seconds: 50 us to 60 s.
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
           0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Spec:
    name: str  # without the fencefs_ prefix
    kind: str  # counter, gauge, histogram
    help: str


CATALOG = {s.name: s for s in (
    Spec("commits", "counter", "Commits that landed, by policy and operation"),
    Spec("conflicts", "counter", "Commits and opens refused with EAGAIN (conflict)"),
    Spec("fenced", "counter", "Commits and writes refused with ESTALE (fenced)"),
    Spec("busy", "counter", "Opens refused with EBUSY (exclusive policy)"),
    Spec("killed", "counter", "Writers that died by a signal; their drafts were kept"),
    Spec("abandoned", "counter", "Drafts left by a daemon that died, put away at mount"),
    Spec("foreign", "counter", "Writes made straight into the backing directory, adopted"),
    Spec("reclaims", "counter", "Reclaims (epoch bumps), by reason"),
    Spec("restores", "counter", "Restores of a retained version that landed"),
    Spec("retention_dropped", "counter", "Items removed by retention, by kind"),
    Spec("retention_dropped_bytes", "counter", "Bytes removed by retention, by kind"),
    Spec("commit_seconds", "histogram", "Time from the commit request (flush, fsync, "
                                        "path operation) to its answer"),
    Spec("open_to_commit_seconds", "histogram", "Time from a write open to its commit"),
    Spec("versions_retained", "gauge", "Retained versions under .fencefs/versions"),
    Spec("versions_bytes", "gauge", "Bytes of retained versions (hard links share "
                                    "blocks with nothing live, so these are real bytes)"),
    Spec("rejected_writes", "gauge", "Rejected writes under .fencefs/rejected"),
    Spec("rejected_bytes", "gauge", "Bytes of rejected writes"),
    Spec("journal_bytes", "gauge", "Bytes of all journal segments"),
    Spec("claims_outstanding", "gauge", "Claims held now, by kind"),
    Spec("files_tracked", "gauge", "Files whose coordination state is in memory"),
)}


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        out, total = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self._counters: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[tuple[str, Labels], Histogram] = {}
        self._gauges: dict[str, Callable[[], float | dict[Labels, float]]] = {}

    # -- recording (cheap, no I/O) -----------------------------------------------

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, _labels(labels))
        self._counters[key] = self._counters.get(key, 0) + amount

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        key = (name, _labels(labels))
        h = self._histograms.get(key)
        if h is None:
            h = self._histograms[key] = Histogram()
        h.observe(seconds)

    def gauge(self, name: str, read: Callable[[], float | dict[Labels, float]]) -> None:
        """Register a gauge read at snapshot time; a dict gives labelled values."""
        self._gauges[name] = read

    def counter(self, name: str, **labels: str) -> float:
        return self._counters.get((name, _labels(labels)), 0)

    # -- reading -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        counters = [{"name": n, "labels": dict(lb), "value": v}
                    for (n, lb), v in sorted(list(self._counters.items()))]
        histograms = []
        for (n, lb), h in sorted(list(self._histograms.items()), key=lambda kv: kv[0]):
            histograms.append({"name": n, "labels": dict(lb), "count": h.count,
                               "sum": h.sum, "buckets": [[b, c] for b, c in h.cumulative()]})
        gauges: list[dict[str, Any]] = []
        for n, read in sorted(list(self._gauges.items())):
            try:
                value = read()
            except Exception:  # noqa: BLE001 - a gauge must never break a scrape
                continue
            if isinstance(value, dict):
                gauges.extend({"name": n, "labels": dict(lb), "value": v}
                              for lb, v in sorted(value.items()))
            else:
                gauges.append({"name": n, "labels": {}, "value": value})
        return {"uptime": round(time.time() - self.started, 3), "counters": counters,
                "gauges": gauges, "histograms": histograms}


# -- rendering -----------------------------------------------------------------------


def quantile(buckets: Iterable[Iterable[float]], q: float) -> float | None:
    """An upper bound of the q-quantile from cumulative buckets."""
    pairs = [(float(b), int(c)) for b, c in buckets]
    if not pairs or pairs[-1][1] == 0:
        return None
    want = q * pairs[-1][1]
    for bound, total in pairs:
        if total >= want:
            return bound
    return None


def families(snapshot: dict[str, Any]) -> list[Any]:
    """prometheus_client metric families for one snapshot."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    out: dict[str, Any] = {}

    def family(name: str, kind: str, labels: list[str]) -> Any:
        full = f"fencefs_{name}"
        key = f"{full}|{','.join(labels)}"
        if key not in out:
            doc = CATALOG[name].help if name in CATALOG else name
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                   "histogram": HistogramMetricFamily}[kind]
            out[key] = cls(full, doc, labels=labels)
        return out[key]

    for row in snapshot["counters"]:
        labels = sorted(row["labels"])
        family(row["name"], "counter", labels).add_metric(
            [row["labels"][k] for k in labels], row["value"])
    for row in snapshot["gauges"]:
        labels = sorted(row["labels"])
        family(row["name"], "gauge", labels).add_metric(
            [row["labels"][k] for k in labels], row["value"])
    for row in snapshot["histograms"]:
        labels = sorted(row["labels"])
        buckets = [("+Inf" if b == float("inf") else repr(float(b)), c)
                   for b, c in row["buckets"]]
        family(row["name"], "histogram", labels).add_metric(
            [row["labels"][k] for k in labels], buckets, row["sum"])
    return list(out.values())


def serve(metrics: Metrics, host: str, port: int) -> Any:
    """Serve ``metrics`` in Prometheus's text format on ``host:port`` (a
    thread of prometheus_client's own). Returns the server (``shutdown()``)."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    class _Collector:
        def collect(self) -> Iterable[Any]:
            return families(metrics.snapshot())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())  # type: ignore[arg-type]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (the host defaults to loopback);
    ``[::1]:PORT`` for IPv6."""
    text = text.strip()
    host, port_text = "127.0.0.1", text
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise ValueError(f"not an address: {text!r} (use HOST:PORT, e.g. 127.0.0.1:9464)")
        host, port_text = text[1:end], text[end + 2:]
    elif ":" in text:
        h, port_text = text.rsplit(":", 1)
        host = h or host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"not an address: {text!r} (use HOST:PORT, e.g. 127.0.0.1:9464)"
                         ) from None
    if not 0 <= port <= 65535:
        raise ValueError(f"not a port: {port}")
    return host, port
