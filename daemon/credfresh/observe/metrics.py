"""Prometheus metrics on a registry of credfresh's own, for /metrics and the textfile collector."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

RefreshResult = Literal["success", "transient_error", "permanent_error"]
ReloadResult = Literal["applied", "rejected", "unchanged"]

REFRESH_RESULTS: Final[tuple[RefreshResult, ...]] = (
    "success",
    "transient_error",
    "permanent_error",
)
RELOAD_RESULTS: Final[tuple[ReloadResult, ...]] = ("applied", "rejected", "unchanged")
HookResult = Literal["success", "failure", "timeout"]
HOOK_RESULTS: Final[tuple[HookResult, ...]] = ("success", "failure", "timeout")
#: STS answers in ~50-300 ms; the tail covers sts.timeout (10 s) and a slow chained source.
DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The textfile is world-readable: node_exporter runs as another user, and no metric is a
#: secret (profile names, counts and times). Credential files stay 0600.
TEXTFILE_MODE: Final = 0o644
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4


class Metrics(Collector):
    """Every credfresh metric, kept as plain numbers and rendered by a custom collector.

    Families built at scrape time emit no `_created` series without the process-wide switch,
    and `remove_profile` drops a profile from all at once. All methods are thread-safe.
    """

    def __init__(self, *, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._bounds = (*sorted(float(b) for b in buckets if math.isfinite(b)), math.inf)
        self._profiles = 0
        self._expiry: dict[str, float] = {}
        self._last_success: dict[str, float] = {}
        self._source_expiry: dict[str, float] = {}
        self._refreshes: dict[tuple[str, str], int] = {}
        self._sts_errors: dict[tuple[str, str], int] = {}
        self._bucket_counts = [0] * len(self._bounds)
        self._duration_sum = 0.0
        self._file_writes = 0
        self._reloads = dict.fromkeys(RELOAD_RESULTS, 0)
        self._hooks = dict.fromkeys(HOOK_RESULTS, 0)
        self._alerts_firing = 0
        self.registry.register(self)

    # Updates ---------------------------------------------------------------------------------

    def set_profiles(self, count: int) -> None:
        """How many profiles the config in force has."""
        with self._lock:
            self._profiles = count

    def set_expiry(self, profile: str, expires_at: datetime | float | None) -> None:
        """When the credentials on disk expire (a datetime or Unix time); None drops it."""
        with self._lock:
            if expires_at is None:
                self._expiry.pop(profile, None)
            else:
                self._expiry[profile] = _unix(expires_at)

    def set_last_success(self, profile: str, when: datetime | float) -> None:
        with self._lock:
            self._last_success[profile] = _unix(when)

    def refresh(self, profile: str, result: RefreshResult, duration: float) -> None:
        """One refresh attempt by result, and its duration in seconds; the first creates all
        three series at 0, so `increase()` sees the first failure."""
        if result not in REFRESH_RESULTS:
            raise ValueError(
                f"result: expected one of {', '.join(REFRESH_RESULTS)} (got {result!r})"
            )
        with self._lock:
            for each in REFRESH_RESULTS:
                self._refreshes.setdefault((profile, each), 0)
            self._refreshes[(profile, result)] += 1
            if duration >= 0 and math.isfinite(duration):
                self._bucket_counts[bisect.bisect_left(self._bounds, duration)] += 1
                self._duration_sum += duration

    def sts_error(self, profile: str, code: str) -> None:
        with self._lock:
            key = (profile, code)
            self._sts_errors[key] = self._sts_errors.get(key, 0) + 1

    def file_written(self) -> None:
        with self._lock:
            self._file_writes += 1

    def config_reloaded(self, result: ReloadResult) -> None:
        if result not in RELOAD_RESULTS:
            raise ValueError(
                f"result: expected one of {', '.join(RELOAD_RESULTS)} (got {result!r})"
            )
        with self._lock:
            self._reloads[result] += 1

    def hook_ran(self, result: HookResult) -> None:
        if result not in HOOK_RESULTS:
            raise ValueError(f"result: expected one of {', '.join(HOOK_RESULTS)} (got {result!r})")
        with self._lock:
            self._hooks[result] += 1

    def set_alerts_firing(self, count: int) -> None:
        with self._lock:
            self._alerts_firing = count

    def set_source_expiries(self, ends: Mapping[str, datetime]) -> None:
        """When each profile's source runs out (certificates); the others are dropped."""
        with self._lock:
            self._source_expiry = {name: _unix(when) for name, when in ends.items()}

    def remove_profile(self, name: str) -> None:
        """Forget a profile that left the config: no stale series for it stays exported."""
        with self._lock:
            self._drop(name)

    def _drop(self, name: str) -> None:
        self._expiry.pop(name, None)
        self._last_success.pop(name, None)
        self._source_expiry.pop(name, None)
        for table in (self._refreshes, self._sts_errors):
            for key in [key for key in table if key[0] == name]:
                del table[key]

    # Output ----------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format 0.0.4 (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def write_textfile(self, path: Path, *, euid: int | None = None) -> bool:
        """`render()` for node_exporter's textfile collector, through the one atomic write.

        False when the file already held these bytes; CredfileError when it cannot be written.
        """
        from credfresh.credfile.atomic import atomic_write

        return atomic_write(path, self.render(), mode=TEXTFILE_MODE, euid=euid)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        with self._lock:
            profiles, file_writes, firing = self._profiles, self._file_writes, self._alerts_firing
            tables: tuple[Mapping[Any, float], ...] = (
                self._expiry,
                self._last_success,
                self._refreshes,
                self._sts_errors,
                self._source_expiry,
            )
            samples = [sorted(table.items()) for table in tables]
            histogram = self._histogram(list(self._bucket_counts), self._duration_sum)
            reloads = list(self._reloads.items())
            hooks = list(self._hooks.items())
        yield GaugeMetricFamily("credfresh_profiles", "Profiles in the config in force.", profiles)
        for (family, name, doc, labels), rows in zip(_PER_PROFILE, samples, strict=True):
            yield _labelled(family(name, doc, labels=labels), rows)
        yield histogram
        yield CounterMetricFamily(
            "credfresh_file_writes_total",
            "Times the credentials file was rewritten.",
            value=file_writes,
        )
        yield _labelled(
            CounterMetricFamily(
                "credfresh_config_reloads_total",
                "Config reloads by result: applied, rejected, unchanged.",
                labels=["result"],
            ),
            reloads,
        )
        yield _labelled(
            CounterMetricFamily(
                "credfresh_hooks_total",
                "on_refresh hook runs by result: success, failure, timeout.",
                labels=["result"],
            ),
            hooks,
        )
        yield GaugeMetricFamily("credfresh_alerts_firing", "Alerts firing now.", value=firing)

    def _histogram(self, counts: list[int], duration_sum: float) -> HistogramMetricFamily:
        histogram = HistogramMetricFamily(
            "credfresh_refresh_duration_seconds",
            "How long one refresh took, STS call and file write included.",
        )
        cumulative, running = [], 0
        for bound, count in zip(self._bounds, counts, strict=True):
            running += count
            cumulative.append((_le(bound), float(running)))
        histogram.add_metric([], cumulative, duration_sum)
        return histogram


_Family = TypeVar("_Family", GaugeMetricFamily, CounterMetricFamily)
#: The per-profile families, in exposition order: (type, name, help, labels).
_PER_PROFILE: Final = (
    (
        GaugeMetricFamily,
        "credfresh_credentials_expiry_timestamp_seconds",
        "When the credentials on disk for the profile expire (Unix time).",
        ["profile"],
    ),
    (
        GaugeMetricFamily,
        "credfresh_last_success_timestamp_seconds",
        "When the profile was last refreshed successfully (Unix time).",
        ["profile"],
    ),
    (
        CounterMetricFamily,
        "credfresh_refresh_total",
        "Refresh attempts by result: success, transient_error, permanent_error.",
        ["profile", "result"],
    ),
    (
        CounterMetricFamily,
        "credfresh_sts_errors_total",
        "Failed refreshes by STS error code.",
        ["profile", "code"],
    ),
    (
        GaugeMetricFamily,
        "credfresh_source_expiry_timestamp_seconds",
        "When the profile's source itself ends, e.g. its Roles Anywhere certificate (Unix time).",
        ["profile"],
    ),
)


def _labelled(family: _Family, samples: Iterable[tuple[str | tuple[str, ...], float]]) -> _Family:
    """`family` with one sample per label value (or tuple of them), in the order given."""
    for key, value in samples:
        family.add_metric([key] if isinstance(key, str) else list(key), value)
    return family


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it: `0.25`, `1.0`, `+Inf`."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _unix(moment: datetime | float) -> float:
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)
