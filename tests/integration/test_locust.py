"""A real headless Locust run against the real graph: the release engineers' tool works on this stack."""

from __future__ import annotations

from pathlib import Path

from loadtests.run import LoadTestOptions, run_headless


def test_headless_locust_run_streams_without_failures(running_app, tmp_path: Path):
    options = LoadTestOptions(
        host=running_app.url, profile="steady", users=4, run_time_s=20, csv_dir=tmp_path, label="ci"
    )
    result = run_headless(options, quiet=True)
    assert result.returncode == 0
    assert len(result.records) >= 8
    failed = [r for r in result.records if not r.ok]
    assert failed == []
    assert all(r.ttft_s is not None and r.ttft_s > 0 for r in result.records)
    assert all(r.output_tokens for r in result.records)
    assert {r.variant for r in result.records} <= {"tiny-v1", "tiny-v2"}
    stats = (tmp_path / "ci_stats.csv").read_text()
    assert "ttft" in stats
