"""MXNet RecordIO: byte layout against hand-built bytes, round trips, re-indexing, bad input."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from ekd.data.errors import RecordIOError
from ekd.data.recordio import (
    MAGIC,
    RecordReader,
    RecordWriter,
    encode_record,
    first_label,
    pack_payload,
    read_index,
    reindex,
    scan_records,
    unpack_payload,
)

M = struct.pack("<I", 0xCED7230A)


def frame(cflag: int, length: int) -> bytes:
    return struct.pack("<II", 0xCED7230A, (cflag << 29) | length)


def test_magic_constant():
    assert MAGIC == 0xCED7230A
    assert M == b"\x0a\x23\xd7\xce"  # little-endian


def test_whole_record_bytes_and_padding():
    assert encode_record(b"abcde") == frame(0, 5) + b"abcde" + b"\0\0\0"
    assert encode_record(b"abcd") == frame(0, 4) + b"abcd"
    assert encode_record(b"") == frame(0, 0)


def test_split_at_aligned_magic():
    payload = b"ABCD" + M + b"EFGHIJ"
    expected = frame(1, 4) + b"ABCD" + frame(3, 6) + b"EFGHIJ" + b"\0\0"
    assert encode_record(payload) == expected


def test_unaligned_magic_is_not_split():
    payload = b"AB" + M + b"CD"
    assert encode_record(payload) == frame(0, 8) + payload


def test_magic_at_start_and_twice_gives_first_middle_last_parts():
    payload = M + b"WXYZ" + M + b"Q"
    expected = frame(1, 0) + frame(2, 4) + b"WXYZ" + frame(3, 1) + b"Q" + b"\0\0\0"
    assert encode_record(payload) == expected


def test_magic_at_the_end_leaves_an_empty_last_part():
    payload = b"ABCD" + M
    assert encode_record(payload) == frame(1, 4) + b"ABCD" + frame(3, 0)


def test_irheader_bytes():
    assert pack_payload(3.0, b"img", id=7) == struct.pack("<IfQQ", 0, 3.0, 7, 0) + b"img"
    labels = pack_payload([1.0, 2.5], b"x", id=1, id2=9)
    assert labels == struct.pack("<IfQQ", 2, 0.0, 1, 9) + struct.pack("<2f", 1.0, 2.5) + b"x"
    header, rest = unpack_payload(labels)
    assert header.flag == 2 and header.id == 1 and header.id2 == 9 and rest == b"x"
    np.testing.assert_array_equal(header.label, np.array([1.0, 2.5], dtype=np.float32))
    assert first_label(header) == 1.0
    header, rest = unpack_payload(pack_payload(5, b"abc"))
    assert header.flag == 0 and header.label == 5.0 and first_label(header) == 5.0 and rest == b"abc"


def _payloads() -> dict[int, bytes]:
    return {
        0: pack_payload([3.0, 5.0], b""),
        1: pack_payload(0.0, b"plain jpeg bytes", id=1),
        2: pack_payload(1.0, b"AAAA" + M + b"BB" + M + b"C", id=2),  # magic inside the image bytes
        3: pack_payload([2.0, 7.0, 9.0], M * 3, id=3),  # label array + repeated magic
        4: pack_payload(1.0, b"", id=4),
    }


def _write(tmp_path, payloads):
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    with RecordWriter(rec, idx) as writer:
        for key, payload in payloads.items():
            writer.write(key, payload)
    return rec, idx


def test_writer_reader_round_trip_and_index_offsets(tmp_path):
    payloads = _payloads()
    rec, idx = _write(tmp_path, payloads)
    # Offsets by hand: each record is its encoded length, in write order.
    expected_offsets, offset = {}, 0
    for key, payload in payloads.items():
        expected_offsets[key] = offset
        offset += len(encode_record(payload))
    assert idx.read_text() == "".join(f"{k}\t{o}\n" for k, o in expected_offsets.items())
    assert rec.stat().st_size == offset
    reader = RecordReader(rec, idx)
    assert reader.keys.tolist() == list(payloads)
    for key, payload in payloads.items():
        assert reader.read(key) == payload
        got, want = reader.read_header(key), unpack_payload(payload)[0]
        assert (got.flag, got.id, got.id2) == (want.flag, want.id, want.id2)
        np.testing.assert_array_equal(got.label, want.label)
    assert [p for _, p in scan_records(rec)] == list(payloads.values())


def test_read_header_of_split_record_falls_back_to_full_read(tmp_path):
    # The magic inside the IRHeader itself (id field) forces a split before the header ends.
    payload = struct.pack("<IfQQ", 0, 4.0, MAGIC, 0) + b"data"
    assert encode_record(payload)[:8] == frame(1, 8)
    rec, idx = _write(tmp_path, {0: payload})
    header = RecordReader(rec, idx).read_header(0)
    assert header.label == 4.0 and header.id == MAGIC


def test_reader_pickles_without_handle_and_reopens_after_fork(tmp_path):
    rec, idx = _write(tmp_path, _payloads())
    reader = RecordReader(rec, idx)
    reader.read(1)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._fd is None and clone.read(2) == _payloads()[2]
    old_fd = reader._fd
    reader._pid = -1  # what a forked worker sees: a handle opened by another process
    assert reader.read(3) == _payloads()[3]
    assert reader._pid == os.getpid() and reader._fd != old_fd
    os.close(old_fd)


def test_reindex_rebuilds_the_index(tmp_path):
    payloads = _payloads()
    rec, idx = _write(tmp_path, payloads)
    original = idx.read_text()
    idx.unlink()
    assert reindex(rec) == len(payloads)
    # The header ids (0 for the header record, the key for the others) are unique: keys come back.
    assert idx.read_text() == original


def test_reindex_uses_positions_when_ids_repeat(tmp_path):
    rec, idx = _write(tmp_path, {10: pack_payload(0.0, b"a"), 11: pack_payload(1.0, b"b")})  # both id 0
    idx.unlink()
    reindex(rec)
    assert sorted(read_index(idx)) == [0, 1]


def test_missing_index_names_reindex_command(tmp_path):
    rec, idx = _write(tmp_path, _payloads())
    idx.unlink()
    with pytest.raises(RecordIOError, match=r"ekd-data reindex .*t\.rec"):
        RecordReader(rec, idx)


def test_wrong_magic_names_file_and_offset(tmp_path):
    rec, idx = _write(tmp_path, _payloads())
    offset = read_index(idx)[1]
    data = bytearray(rec.read_bytes())
    data[offset : offset + 4] = b"XXXX"
    rec.write_bytes(bytes(data))
    with pytest.raises(
        RecordIOError, match=rf"t\.rec \(key 1\): wrong magic 0x58585858 at byte offset {offset}"
    ):
        RecordReader(rec, idx).read(1)
    with pytest.raises(RecordIOError, match=rf"wrong magic .* at byte offset {offset}"):
        list(scan_records(rec))


def test_truncated_record(tmp_path):
    rec, idx = _write(tmp_path, _payloads())
    data = rec.read_bytes()
    rec.write_bytes(data[:-3])  # cut into the last record (key 4, 24 + 0 bytes)
    with pytest.raises(RecordIOError, match=r"t\.rec.*key 4.*truncated record"):
        RecordReader(rec, idx).read(4)
    with pytest.raises(RecordIOError, match="truncated"):
        list(scan_records(rec))


def test_index_offset_past_end(tmp_path):
    rec, idx = _write(tmp_path, _payloads())
    size = rec.stat().st_size
    idx.write_text(f"0\t0\n1\t{size + 100}\n")
    with pytest.raises(RecordIOError, match=rf"t\.idx.*offset {size + 100} of key 1 is past the end"):
        RecordReader(rec, idx)


def test_malformed_index_line(tmp_path):
    rec, idx = _write(tmp_path, _payloads())
    idx.write_text("0\t0\nnot a line\n")
    with pytest.raises(RecordIOError, match=r"t\.idx: line 2"):
        RecordReader(rec, idx)


def test_index_pointing_into_a_split_record(tmp_path):
    rec, idx = _write(tmp_path, {0: b"ABCD" + M + b"EFGH"})
    idx.write_text("0\t12\n")  # the second part (cflag 3)
    with pytest.raises(RecordIOError, match="cflag 3, expected 0 or 1"):
        RecordReader(rec, idx).read(0)


def test_unknown_key_and_short_payload(tmp_path):
    rec, idx = _write(tmp_path, {0: b"short"})
    reader = RecordReader(rec, idx)
    with pytest.raises(RecordIOError, match="no record with key 5"):
        reader.read(5)
    with pytest.raises(RecordIOError, match="shorter than the 24-byte IRHeader"):
        unpack_payload(reader.read(0), "t.rec record 0")
    with pytest.raises(RecordIOError, match="flag 3 announces 3 float32 labels"):
        unpack_payload(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 4)


def test_duplicate_key_is_refused(tmp_path):
    with RecordWriter(tmp_path / "d.rec") as writer:
        writer.write(1, b"a")
        with pytest.raises(ValueError, match="key 1 written twice"):
            writer.write(1, b"b")


def test_non_contiguous_keys_and_duplicate_index_keys(tmp_path):
    payloads = {
        7: pack_payload(0.0, b"seven"),
        3: pack_payload(1.0, b"three"),
        100: pack_payload(2.0, b"hundred"),
    }
    rec, idx = _write(tmp_path, payloads)
    reader = RecordReader(rec, idx)
    assert reader.keys.tolist() == [7, 3, 100] and 100 in reader and 8 not in reader
    for key, payload in payloads.items():
        assert reader.read(key) == payload
    idx.write_text("1\t0\n1\t0\n")
    with pytest.raises(RecordIOError, match=r"t\.idx: key 1 appears more than once"):
        RecordReader(rec, idx)
