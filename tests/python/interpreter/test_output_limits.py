"""Huge outputs stream through with bounded server memory."""

import pytest


@pytest.mark.slow
def test_hundred_megabytes_of_output_stream_with_bounded_memory(sbx, peak_rss_kb):
    sbx.run_code("1")  # the kernel is up
    before = peak_rss_kb(sbx)
    total = 0
    chunks = 0

    def on_stdout(msg):
        nonlocal total, chunks
        total += len(msg.line)
        chunks += 1

    execution = sbx.run_code(
        "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(100 * 1024):\n    sys.stdout.write(line)\n",
        on_stdout=on_stdout,
        timeout=240,
    )
    assert execution.error is None
    assert total == 100 * 1024 * 1024
    assert chunks > 100, "output arrives in many chunks, not one"
    after = peak_rss_kb(sbx)
    assert after - before < 64 * 1024, f"interpreter peak RSS grew from {before} KiB to {after} KiB"
