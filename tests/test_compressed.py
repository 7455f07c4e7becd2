"""A gzip body made of a head deflated once and a tail stored per answer is a valid gzip member, read as the
head and the tail by every decoder; and only a client that accepts gzip is sent one."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from mcpstore_proxy.compressed import GzipHead, accepts_gzip

HEAD = b'{"jsonrpc":"2.0","result":{"tools":[' + b'{"name":"tool","inputSchema":{"type":"object"}},' * 500 + b"{}]},"


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b'"id":7}',
        b'"id":"\\u00e9t\xc3\xa9 \\"quoted\\""}',
        b'"id":123456789012345678901234567890}',
        os.urandom(70_000),
    ],
    ids=["empty", "number", "escaped string", "big number", "longer than one stored block"],
)
def test_the_body_is_one_gzip_member_of_the_head_then_the_tail(tail: bytes) -> None:
    head = GzipHead(HEAD)

    body = head.body(tail)

    assert gzip.decompress(body) == HEAD + tail  # checks the CRC and the length too
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)  # how httpx and urllib3 decode it
    assert decoder.decompress(body) == HEAD + tail
    assert decoder.eof
    assert not decoder.unused_data


def test_one_head_serves_many_answers_and_compresses_a_repetitive_listing_well() -> None:
    head = GzipHead(HEAD)

    bodies = [head.body(f"{number}}}".encode()) for number in range(3)]

    assert [gzip.decompress(body) for body in bodies] == [HEAD + f"{number}}}".encode() for number in range(3)]
    assert len(bodies[0]) < len(HEAD) / 20


@pytest.mark.parametrize(
    "header",
    [b"gzip", b"gzip, deflate", b"deflate, gzip;q=0.5", b"GZIP", b"x-gzip", b"*", b"br;q=1.0, *;q=0.1", b"gzip; q=1"],
)
def test_a_client_that_accepts_gzip_gets_it(header: bytes) -> None:
    assert accepts_gzip(header)


@pytest.mark.parametrize(
    "header",
    [None, b"", b"identity", b"deflate, br", b"gzip;q=0", b"gzip;q=0.0, *", b"*;q=0", b"gzip;q=abc", b"gzip;q=2"],
)
def test_a_client_that_does_not_accept_gzip_gets_the_body_as_it_is(header: bytes | None) -> None:
    assert not accepts_gzip(header)
