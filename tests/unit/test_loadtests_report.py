import random
import struct

from loadtests.gate import SLO, verdict
from loadtests.records import RequestRecord
from loadtests.report import (
    ITL_PNG,
    REPORT_MD,
    THROUGHPUT_PNG,
    TTFT_PNG,
    render_gate_report,
    render_run_report,
    run_summaries,
    summary_table,
)
from loadtests.samples import samples_from_records

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_records(variant: str, *, n: int = 40, slowdown: float = 1.0, seed: int = 0, failures: int = 2):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ttft = rng.lognormvariate(-1, 0.3) * slowdown
        tokens = rng.randint(10, 60)
        itl = rng.lognormvariate(-3, 0.2) * slowdown
        rows.append(
            RequestRecord(
                start_time=1000 + i * 0.5,
                status=200,
                ok=True,
                requested_variant=variant,
                variant=variant,
                ttft_s=ttft,
                itl_s=itl,
                e2e_s=ttft + itl * (tokens - 1),
                output_tokens=tokens,
            )
        )
    rows += [RequestRecord(start_time=1000 + i, status=503, ok=False, error="HTTP 503") for i in range(failures)]
    return rows


def assert_valid_png(path, *, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 250
    assert len(data) >= min_bytes  # a plot with axes, lines and text, not an empty canvas


def test_run_report_writes_markdown_and_three_valid_pngs(tmp_path):
    records = fake_records("tiny-v1") + fake_records("tiny-v2", seed=1, slowdown=1.5)
    files = render_run_report(records, tmp_path, title="Load test", context={"profile": "steady"})
    assert files.markdown == tmp_path / REPORT_MD
    assert {p.name for p in files.plots} == {TTFT_PNG, ITL_PNG, THROUGHPUT_PNG}
    for path in files.plots:
        assert_valid_png(path)
    text = files.markdown.read_text()
    assert text.startswith("# Load test")
    assert "- **profile**: steady" in text
    assert "| tiny-v1 | 40 |" in text and "| tiny-v2 | 40 |" in text
    assert "| unknown | 4 | 4 (100.0%)" in text  # failures without a variant header are kept, not hidden
    assert f"![TTFT CDF]({TTFT_PNG})" in text


def test_gate_report_shows_every_check_and_the_verdict(tmp_path):
    baseline, candidate = fake_records("tiny-v1", failures=0), fake_records("tiny-v2", seed=3, slowdown=2.0, failures=0)
    slo = SLO(
        ttft_p95_max_s=3, itl_p95_max_s=0.5, error_rate_max=0.01, min_output_tokens_per_s=1, max_relative_slowdown=0.2
    )
    result = verdict(
        samples_from_records(baseline),
        samples_from_records(candidate),
        slo,
        baseline_name="tiny-v1",
        candidate_name="tiny-v2",
    )
    files = render_gate_report(result, baseline, candidate, tmp_path)
    text = files.markdown.read_text()
    assert "# Release gate: tiny-v2 vs tiny-v1: **FAIL**" in text
    for check in result.checks:
        assert f"| {check.name} | {check.kind} |" in text
    assert "| ttft_regression | regression | **FAIL** |" in text
    assert "| tiny-v2 (candidate) | 40 |" in text
    for path in files.plots:
        assert_valid_png(path)


def test_plots_render_even_without_samples(tmp_path):
    failed_only = [RequestRecord(start_time=0, status=0, ok=False, error="refused")]
    files = render_run_report(failed_only, tmp_path, title="Empty")
    for path in files.plots:
        assert_valid_png(path, min_bytes=2_000)


def test_summary_table_formats_milliseconds_and_missing_values():
    summaries = run_summaries(fake_records("a", n=3, failures=0))
    table = summary_table(summaries)
    assert table.splitlines()[0].startswith("| variant | requests |")
    assert "| a | 3 | 0 (0.0%) |" in table
    missing = summary_table(run_summaries([RequestRecord(start_time=0, status=500, ok=False, variant="b")]))
    assert "n/a / n/a / n/a" in missing


def test_run_summaries_add_an_all_row_only_for_several_variants():
    assert list(run_summaries(fake_records("a", failures=0))) == ["a"]
    both = run_summaries(fake_records("a", failures=0) + fake_records("b", failures=0))
    assert list(both) == ["a", "b", "all"]
    assert both["all"].requests == 80
    assert both["all"].output_tokens == both["a"].output_tokens + both["b"].output_tokens
