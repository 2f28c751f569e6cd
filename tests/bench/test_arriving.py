"""bench.arriving: the client held to a link's speed."""

import time

import pytest

from bench.arriving import as_multipart, paced


@pytest.mark.parametrize("size", [0, 1, 256 * 1024, 600_000])
def test_a_paced_body_is_sent_whole_no_faster_than_the_link(size):
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    sent: list[float] = []
    start = time.perf_counter()
    assert b"".join(paced(body, 80.0, sent)) == body  # 10 MB/s
    # the last piece leaves once the ones before it would have crossed the link
    before_last = max(0, (len(body) - 1) // (256 * 1024)) * 256 * 1024
    assert time.perf_counter() - start >= before_last / 10e6
    assert len(sent) == 1 and sent[0] <= time.perf_counter() - start


def test_a_multipart_body_holds_the_file_as_a_form_parser_reads_it():
    from python_multipart.multipart import MultipartParser, parse_options_header

    data = bytes(range(256)) * 1000 + b"\r\n--almost a boundary\r\n"
    body, content_type = as_multipart(data, "scene.tif")
    _media, options = parse_options_header(content_type)
    got: list[bytes] = []
    parser = MultipartParser(options[b"boundary"], {"on_part_data": lambda d, s, e: got.append(d[s:e])})
    parser.write(body)
    parser.finalize()
    assert b"".join(got) == data
