"""bench/py_spy_profile.py's reading of py-spy's raw output: frames counted without their line numbers, self and
inclusive apart, and the samples of a pipe write (the upstream's time on the proxy's clock) left out of both."""

from __future__ import annotations

from bench.py_spy_profile import report, tally

_RAW = """\
main (cli.py:59);FastLane.__call__ (mcpstore_proxy/lane.py:171);read_body (mcpstore_proxy/lane_wire.py:190) 3
main (cli.py:59);FastLane.__call__ (mcpstore_proxy/lane.py:164) 1
main (cli.py:59);FastLane.__call__ (mcpstore_proxy/lane.py:180);StreamWriter.write (asyncio/streams.py:325) 6
"""


def test_self_and_inclusive_shares_leave_out_pipe_writes_and_merge_the_lines_of_a_frame() -> None:
    samples, in_writes, running, on_stack = tally(_RAW)
    assert (samples, in_writes) == (10, 6)
    assert running == {"read_body (mcpstore_proxy/lane_wire.py)": 3, "FastLane.__call__ (mcpstore_proxy/lane.py)": 1}
    assert on_stack["FastLane.__call__ (mcpstore_proxy/lane.py)"] == 4  # its two lines, once each sample
    assert on_stack["main (cli.py)"] == 4
    printed = report(_RAW, top=5)
    assert "6 (60%) runnable in a pipe write" in printed
    assert "| 75.0% | `read_body (mcpstore_proxy/lane_wire.py)` |" in printed


def test_a_profile_with_no_sample_says_so() -> None:
    assert report("", top=5).startswith("no samples")
