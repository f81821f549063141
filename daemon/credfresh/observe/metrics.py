"""Prometheus metrics for /metrics and the textfile collector, rendered here.

The text exposition format 0.0.4 is a few lines of code; prometheus_client's import cost the
daemon about 1 MB of RSS and 13 ms of start-up (benchmarks/PROFILE.md, "Footprint"). Its
output is the reference: tests/unit/test_metrics.py checks the two are byte-identical.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

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
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Every credfresh metric, kept as plain numbers and rendered at scrape time.

    No `_created` series; `remove_profile` drops a profile from all at once. All methods are
    thread-safe.
    """

    def __init__(self, *, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
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
        return "".join(self._lines()).encode("utf-8")

    def write_textfile(self, path: Path, *, euid: int | None = None) -> bool:
        """`render()` for node_exporter's textfile collector, through the one atomic write.

        False when the file already held these bytes; CredfileError when it cannot be written.
        """
        from credfresh.credfile.atomic import atomic_write

        return atomic_write(path, self.render(), mode=TEXTFILE_MODE, euid=euid)

    def _lines(self) -> Iterator[str]:
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
            counts, duration_sum = list(self._bucket_counts), self._duration_sum
            reloads: Sequence[tuple[str, int]] = list(self._reloads.items())
            hooks: Sequence[tuple[str, int]] = list(self._hooks.items())
        yield from _family("credfresh_profiles", "gauge", "Profiles in the config in force.")
        yield _sample("credfresh_profiles", (), profiles)
        for (kind, name, doc, labels), rows in zip(_PER_PROFILE, samples, strict=True):
            yield from _family(name, kind, doc)
            for key, value in rows:
                values = (key,) if isinstance(key, str) else key
                yield _sample(name, tuple(zip(labels, values, strict=True)), value)
        yield from self._histogram(counts, duration_sum)
        yield from _family(
            "credfresh_file_writes_total", "counter", "Times the credentials file was rewritten."
        )
        yield _sample("credfresh_file_writes_total", (), file_writes)
        for name, doc, by_result in (
            (
                "credfresh_config_reloads_total",
                "Config reloads by result: applied, rejected, unchanged.",
                reloads,
            ),
            (
                "credfresh_hooks_total",
                "on_refresh hook runs by result: success, failure, timeout.",
                hooks,
            ),
        ):
            yield from _family(name, "counter", doc)
            for result, count in by_result:
                yield _sample(name, (("result", result),), count)
        yield from _family("credfresh_alerts_firing", "gauge", "Alerts firing now.")
        yield _sample("credfresh_alerts_firing", (), firing)

    def _histogram(self, counts: list[int], duration_sum: float) -> Iterator[str]:
        name = "credfresh_refresh_duration_seconds"
        yield from _family(
            name, "histogram", "How long one refresh took, STS call and file write included."
        )
        running = 0
        for bound, count in zip(self._bounds, counts, strict=True):
            running += count
            yield _sample(f"{name}_bucket", (("le", _le(bound)),), running)
        yield _sample(f"{name}_count", (), running)
        yield _sample(f"{name}_sum", (), duration_sum)


#: The per-profile families, in exposition order: (type, name, help, labels).
_PER_PROFILE: Final = (
    (
        "gauge",
        "credfresh_credentials_expiry_timestamp_seconds",
        "When the credentials on disk for the profile expire (Unix time).",
        ("profile",),
    ),
    (
        "gauge",
        "credfresh_last_success_timestamp_seconds",
        "When the profile was last refreshed successfully (Unix time).",
        ("profile",),
    ),
    (
        "counter",
        "credfresh_refresh_total",
        "Refresh attempts by result: success, transient_error, permanent_error.",
        ("profile", "result"),
    ),
    (
        "counter",
        "credfresh_sts_errors_total",
        "Failed refreshes by STS error code.",
        ("profile", "code"),
    ),
    (
        "gauge",
        "credfresh_source_expiry_timestamp_seconds",
        "When the profile's source itself ends, e.g. its Roles Anywhere certificate (Unix time).",
        ("profile",),
    ),
)


def _family(name: str, kind: str, doc: str) -> tuple[str, str]:
    text = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {text}\n", f"# TYPE {name} {kind}\n"


def _sample(name: str, labels: tuple[tuple[str, str], ...], value: float) -> str:
    """One sample line; labels sorted by name and escaped, the value as Go prints it."""
    if not labels:
        return f"{name} {_go_float(value)}\n"
    pairs = ",".join(
        f'{key}="{_escape(text)}"' for key, text in sorted(labels, key=lambda pair: pair[0])
    )
    return f"{name}{{{pairs}}} {_go_float(value)}\n"


def _escape(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _go_float(value: float) -> str:
    """A float as Prometheus's Go parser expects it: `+Inf`, `NaN`, `1.7e+09`, `0.25`."""
    number = float(value)
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if math.isnan(number):
        return "NaN"
    text = repr(number)
    dot = text.find(".")
    if number > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it: `0.25`, `1.0`, `+Inf`."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _unix(moment: datetime | float) -> float:
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)
