"""Metrics: every series on a private registry, no `_created`, and a parseable textfile."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from credfresh.observe.metrics import DURATION_BUCKETS, Metrics
from support import examples

EXPIRY = datetime(2025, 3, 1, 13, 0, tzinfo=UTC)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def reference(text: str) -> str:
    """`text` parsed and rendered again by prometheus_client (families in the same order)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )

    families: list[Metric] = []
    for parsed in text_string_to_metric_families(text):
        kinds = {
            "gauge": GaugeMetricFamily,
            "counter": CounterMetricFamily,
            "histogram": HistogramMetricFamily,
        }
        family = kinds[parsed.type](parsed.name, parsed.documentation)
        family.samples = list(parsed.samples)
        families.append(family)

    class Fixed:
        def collect(self) -> list[Metric]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry).decode()


def busy() -> Metrics:
    metrics = Metrics()
    metrics.set_profiles(2)
    metrics.set_expiry("app-prod", EXPIRY)
    metrics.set_expiry("app-audit", EXPIRY.timestamp() + 60)
    metrics.set_last_success("app-prod", EXPIRY.timestamp() - 3600)
    metrics.refresh("app-prod", "success", 0.2)
    metrics.refresh("app-audit", "permanent_error", 0.08)
    metrics.sts_error("app-audit", "AccessDenied")
    metrics.file_written()
    metrics.config_reloaded("applied")
    metrics.set_alerts_firing(1)
    return metrics


class TestMetrics:
    def test_every_documented_series_is_rendered(self) -> None:
        """All nine metrics appear with their labels and values after one of each update."""
        found = samples(busy())
        assert found[("credfresh_profiles", ())] == 2
        assert (
            found[("credfresh_credentials_expiry_timestamp_seconds", (("profile", "app-prod"),))]
            == EXPIRY.timestamp()
        )
        assert (
            found[("credfresh_refresh_total", (("profile", "app-prod"), ("result", "success")))]
            == 1
        )
        assert (
            found[
                (
                    "credfresh_refresh_total",
                    (("profile", "app-prod"), ("result", "transient_error")),
                )
            ]
            == 0
        )
        assert (
            found[
                ("credfresh_sts_errors_total", (("code", "AccessDenied"), ("profile", "app-audit")))
            ]
            == 1
        )
        assert found[("credfresh_refresh_duration_seconds_count", ())] == 2
        assert found[("credfresh_refresh_duration_seconds_bucket", (("le", "0.1"),))] == 1
        assert found[("credfresh_refresh_duration_seconds_bucket", (("le", "+Inf"),))] == 2
        assert found[("credfresh_file_writes_total", ())] == 1
        assert found[("credfresh_config_reloads_total", (("result", "applied"),))] == 1
        assert found[("credfresh_config_reloads_total", (("result", "rejected"),))] == 0
        assert found[("credfresh_alerts_firing", ())] == 1
        assert found[
            ("credfresh_last_success_timestamp_seconds", (("profile", "app-prod"),))
        ] == EXPIRY.timestamp() - 3600  # fmt: skip

    def test_no_created_series(self) -> None:
        """Counters and the histogram render without any `_created` line."""
        text = busy().render().decode()
        assert "_created" not in text
        assert "# TYPE credfresh_refresh_total counter" in text

    def test_two_instances_do_not_clash(self) -> None:
        first, second = busy(), busy()
        second.sts_error("app-prod", "Throttling")
        assert samples(first) != samples(second)
        assert samples(first) == samples(busy())

    def test_same_bytes_as_prometheus_client(self) -> None:
        """The renderer writes what prometheus_client's generate_latest writes for the same
        families: the reference encoder of the format, label escaping and Go floats included."""
        metrics = busy()
        metrics.set_expiry('we"ird\\name\n', 1_700_000_000.5)
        metrics.sts_error("app-prod", "Throttling")
        metrics.refresh("app-prod", "transient_error", float("inf"))
        metrics.set_source_expiries({"app-prod": EXPIRY})
        metrics.hook_ran("timeout")
        metrics.config_reloaded("applied")
        text = metrics.render().decode()
        assert text == reference(text)
        assert Metrics().render().decode() == reference(Metrics().render().decode())

    def test_remove_profile_drops_its_series(self) -> None:
        """A removed profile leaves no labelled series behind; others keep theirs."""
        metrics = busy()
        metrics.remove_profile("app-audit")
        labelled = [
            labels for (_, labels) in samples(metrics) if ("profile", "app-audit") in labels
        ]
        assert labelled == []
        assert any(("profile", "app-prod") in labels for (_, labels) in samples(metrics))

    def test_unknown_results_are_refused(self) -> None:
        """A typo in a result label is a ValueError, not a new series."""
        metrics = Metrics()
        with pytest.raises(ValueError, match="result"):
            metrics.refresh("p", "succes", 1.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="result"):
            metrics.config_reloaded("done")  # type: ignore[arg-type]

    def test_textfile_is_atomic_world_readable_and_parseable(self, tmp_path: Path) -> None:
        """The textfile is written whole, mode 0644, parses, and is not rewritten when unchanged."""
        path = tmp_path / "credfresh.prom"
        metrics = busy()
        old_umask = os.umask(0o077)
        try:
            assert metrics.write_textfile(path) is True
        finally:
            os.umask(old_umask)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        text = path.read_text()
        assert text == metrics.render().decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert "credfresh_refresh_duration_seconds" in names
        assert "_created" not in text
        assert metrics.write_textfile(path) is False
        assert [p.name for p in tmp_path.iterdir()] == ["credfresh.prom"]

    @settings(max_examples=examples(100), deadline=None)
    @given(st.lists(st.floats(min_value=0, max_value=120, allow_nan=False), max_size=30))
    def test_histogram_buckets_are_cumulative(self, durations: list[float]) -> None:
        """Bucket counts never decrease, and +Inf equals the count of observations."""
        metrics = Metrics()
        for duration in durations:
            metrics.refresh("p", "success", duration)
        found = samples(metrics)
        bounds = [repr(float(b)) for b in DURATION_BUCKETS] + ["+Inf"]
        counts = [
            found[("credfresh_refresh_duration_seconds_bucket", (("le", b),))] for b in bounds
        ]
        assert counts == sorted(counts)
        assert counts[-1] == len(durations)
        assert found[("credfresh_refresh_duration_seconds_sum", ())] == pytest.approx(
            sum(durations)
        )
