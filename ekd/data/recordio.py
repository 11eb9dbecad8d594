"""MXNet RecordIO (``.rec`` + ``.idx``) in pure Python: reader, writer, re-indexer. No mxnet needed.

On-disk layout of one record (dmlc-core ``recordio``), all integers little-endian::

    uint32 magic = 0xCED7230A
    uint32 lrec  = cflag << 29 | length        (length < 2**29)
    length bytes of data, then zero padding up to a multiple of 4 bytes

``cflag`` 0 is a whole record. A payload that contains the magic at a 4-byte aligned position is
split there by the writer into parts with cflag 1 (first), 2 (middle) and 3 (last); the magic itself
is dropped and the reader puts it back between the parts. The ``.idx`` file holds text lines
``key<TAB>offset`` with the byte offset of each record's first part.

A record payload produced by ``mxnet.recordio.pack`` starts with an ``IRHeader`` (struct ``'<IfQQ'``:
flag, label, id, id2). When ``flag > 0`` the header's label field is unused and ``flag`` float32
labels follow the header; the image bytes (usually JPEG) come last.

InsightFace-style files put a header record at key 0 whose label array is ``[A, B]``: image records
are keys ``1 .. A-1`` and identity records ``A .. B-1`` carry ``[start, end)`` key ranges of the
images of identity ``0, 1, ...``. Plain im2rec files have no such record.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ekd.data.errors import RecordIOError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_HEADER = struct.Struct("<IfQQ")
_FRAME = struct.Struct("<II")
IRHEADER_SIZE = _HEADER.size  # 24 bytes


class IRHeader(NamedTuple):
    """Header of a packed record, as ``mxnet.recordio.IRHeader``.

    ``label`` is a float when ``flag == 0`` and a float32 array of length ``flag`` otherwise.
    """

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def _align4(n: int) -> int:
    return (n + 3) & ~3


def pack_payload(label: float | np.ndarray | list[float], data: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Build a record payload: IRHeader (+ float32 label array) + ``data`` (``mxnet.recordio.pack``).

    A scalar label is stored in the header (flag 0); a sequence is stored after it (flag = its length).
    """
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _HEADER.pack(0, float(label), id, id2) + bytes(data)
    labels = np.asarray(label, dtype="<f4").ravel()
    if labels.size == 0:
        raise ValueError("pack_payload: an empty label array cannot be stored (flag 0 means a scalar label)")
    return _HEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + bytes(data)


def unpack_payload(payload: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a payload into its :class:`IRHeader` and the remaining (image) bytes.

    ``where`` names the record in error messages (e.g. ``"train.rec record 17"``).
    """
    if len(payload) < IRHEADER_SIZE:
        raise RecordIOError(
            f"{where}: payload of {len(payload)} bytes is shorter than the {IRHEADER_SIZE}-byte IRHeader"
        )
    flag, label, id_, id2 = _HEADER.unpack_from(payload, 0)
    if flag == 0:
        return IRHeader(0, label, id_, id2), payload[IRHEADER_SIZE:]
    end = IRHEADER_SIZE + 4 * flag
    if len(payload) < end:
        raise RecordIOError(
            f"{where}: IRHeader flag {flag} announces {flag} float32 labels but the payload has only "
            f"{len(payload) - IRHEADER_SIZE} bytes after the header"
        )
    labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=IRHEADER_SIZE).astype(np.float32)
    return IRHeader(flag, labels, id_, id2), payload[end:]


def first_label(header: IRHeader) -> float:
    """The class label of an image record: the scalar label, or the first value of a label array."""
    return float(header.label) if header.flag == 0 else float(header.label[0])


def encode_record(payload: bytes) -> bytes:
    """On-disk bytes of one record, split at aligned occurrences of the magic as dmlc-core does."""
    payload = bytes(payload)
    size = len(payload)
    if size > _LENGTH_MASK:
        raise ValueError(f"a RecordIO record holds at most {_LENGTH_MASK} bytes, got {size}")
    out: list[bytes] = []
    start = 0
    # Only aligned positions whose 4 bytes fit completely are checked (dmlc: i < lower_align).
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0 and pos + 4 <= (size & ~3):
            cflag = 1 if start == 0 else 2
            out.append(_FRAME.pack(MAGIC, cflag << 29 | (pos - start)))
            out.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    cflag = 3 if start != 0 else 0
    out.append(_FRAME.pack(MAGIC, cflag << 29 | (size - start)))
    out.append(payload[start:])
    out.append(b"\0" * (_align4(size) - size))
    return b"".join(out)


def decode_record(buf: bytes | memoryview, offset: int, where: str, base: int = 0) -> tuple[bytes, int]:
    """Decode the record whose first part starts at ``offset`` of ``buf``.

    Returns the reassembled payload and the offset just past the record. ``where`` names the file in
    errors; ``base`` is the file offset of ``buf[0]`` so that messages give file byte offsets.
    """
    parts: list[bytes] = []
    pos = offset
    expect_continuation = False
    total = len(buf)
    while True:
        if pos + 8 > total:
            raise RecordIOError(
                f"{where}: truncated record at byte offset {base + pos}: need an 8-byte frame header, "
                f"{total - pos} bytes left"
            )
        magic, lrec = _FRAME.unpack_from(buf, pos)
        if magic != MAGIC:
            raise RecordIOError(
                f"{where}: wrong magic 0x{magic:08X} at byte offset {base + pos} (expected 0x{MAGIC:08X}); "
                "the file is not MXNet RecordIO or the .idx offset is wrong"
            )
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if expect_continuation and cflag not in (2, 3):
            raise RecordIOError(
                f"{where}: record part at byte offset {base + pos} has cflag {cflag}, expected 2 or 3 "
                "(continuation of a split record)"
            )
        if not expect_continuation and cflag not in (0, 1):
            raise RecordIOError(
                f"{where}: record at byte offset {base + pos} starts with cflag {cflag}, expected 0 or 1 "
                "(the .idx offset may point into the middle of a split record)"
            )
        data_start = pos + 8
        if data_start + length > total:
            raise RecordIOError(
                f"{where}: truncated record at byte offset {base + pos}: it declares {length} data bytes, "
                f"only {total - data_start} remain"
            )
        parts.append(bytes(buf[data_start : data_start + length]))
        pos = data_start + _align4(length)
        if cflag in (0, 3):
            return (parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)), min(pos, total)
        expect_continuation = True


class RecordWriter:
    """Write records to ``rec_path`` and their offsets to ``idx_path`` (``MXIndexedRecordIO`` 'w').

    Use as a context manager; keys are written to the index in the order given.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._rec = open(self.rec_path, "wb")  # noqa: SIM115 - closed in close()
        self._idx = open(self.idx_path, "w")  # noqa: SIM115 - closed in close()
        self._keys: set[int] = set()

    def write(self, key: int, payload: bytes) -> None:
        """Append one record with ``key`` (keys must be unique)."""
        key = int(key)
        if key in self._keys:
            raise ValueError(f"{self.rec_path}: key {key} written twice")
        self._keys.add(key)
        offset = self._rec.tell()
        self._rec.write(encode_record(payload))
        self._idx.write(f"{key}\t{offset}\n")

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_index(idx_path: str | os.PathLike, rec_path: str | os.PathLike | None = None) -> dict[int, int]:
    """Parse an ``.idx`` file into ``{key: offset}``; a missing file points to ``ekd-data reindex``."""
    keys, offsets = read_index_arrays(idx_path, rec_path)
    return dict(zip(keys.tolist(), offsets.tolist()))


def read_index_arrays(
    idx_path: str | os.PathLike, rec_path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ``.idx`` file into int64 arrays ``(keys, offsets)`` in file order.

    Arrays rather than dicts: millions of records stay a few tens of MB, shared copy-on-write by
    forked DataLoader workers (Python objects would be copied page by page as refcounts change).
    """
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        rec_hint = rec_path if rec_path is not None else idx_path.with_suffix(".rec")
        raise RecordIOError(
            f"{idx_path}: index file not found; rebuild it by scanning the records with "
            f"`ekd-data reindex {rec_hint}`"
        )
    text = idx_path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    table = None
    try:  # fast path: well-formed "key<TAB>offset" lines
        if all(line.count("\t") == 1 for line in lines):
            table = np.array([line.split("\t") for line in lines], dtype=np.int64).reshape(-1, 2)
    except ValueError:
        table = None
    if table is None:  # find the first bad line for the message
        for line_no, line in enumerate(text.splitlines(), start=1):
            fields = line.strip().split("\t")
            if not line.strip():
                continue
            try:
                if len(fields) != 2:
                    raise ValueError
                int(fields[0]), int(fields[1])
            except ValueError:
                raise RecordIOError(
                    f"{idx_path}: line {line_no} is {line.strip()!r}, expected 'key<TAB>offset' "
                    "with two integers"
                ) from None
        raise RecordIOError(f"{idx_path}: cannot parse the index")  # pragma: no cover - defensive
    keys, offsets = table[:, 0].copy(), table[:, 1].copy()
    if (offsets < 0).any():
        i = int(np.flatnonzero(offsets < 0)[0])
        raise RecordIOError(f"{idx_path}: entry {i + 1}: negative offset {offsets[i]} for key {keys[i]}")
    unique, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        raise RecordIOError(f"{idx_path}: key {int(unique[counts > 1][0])} appears more than once")
    return keys, offsets


def scan_records(rec_path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for every record of ``rec_path`` in file order."""
    rec_path = Path(rec_path)
    data = rec_path.read_bytes()
    pos = 0
    while pos < len(data):
        payload, end = decode_record(data, pos, str(rec_path))
        yield pos, payload
        pos = end


def reindex(rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> int:
    """Rebuild the ``.idx`` of ``rec_path`` by scanning it; returns the number of records.

    Keys are the ``id`` field of each record's IRHeader when those are unique (``face2rec`` and
    insightface write the key there); otherwise the record's position in the file (0, 1, 2, ...).
    """
    rec_path = Path(rec_path)
    if not rec_path.is_file():
        raise RecordIOError(f"{rec_path}: record file not found")
    idx_path = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
    offsets: list[int] = []
    ids: list[int | None] = []
    for i, (offset, payload) in enumerate(scan_records(rec_path)):
        offsets.append(offset)
        try:
            ids.append(unpack_payload(payload, f"{rec_path} record {i}")[0].id)
        except RecordIOError:
            ids.append(None)  # not a packed payload: fall back to positional keys
    keys: list[int] = list(range(len(offsets)))
    if all(k is not None for k in ids) and len(set(ids)) == len(ids):
        keys = [int(k) for k in ids]  # type: ignore[arg-type]
    with open(idx_path, "w") as f:
        for key, offset in zip(keys, offsets):
            f.write(f"{key}\t{offset}\n")
    return len(offsets)


class RecordReader:
    """Random access to the records of ``rec_path`` through its ``.idx``.

    The file is opened lazily and reopened when the process id changes, so each DataLoader worker
    (forked or spawned) reads through its own handle; the object pickles without its handle. Each
    read is one ``pread`` of the record's whole span, known from the sorted ``.idx`` offsets.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise RecordIOError(f"{self.rec_path}: record file not found")
        keys, offsets = read_index_arrays(self.idx_path, self.rec_path)
        self.file_size = self.rec_path.stat().st_size
        past = np.flatnonzero(offsets >= self.file_size)
        if past.size:
            i = int(past[0])
            raise RecordIOError(
                f"{self.idx_path}: offset {offsets[i]} of key {keys[i]} is past the end of {self.rec_path} "
                f"({self.file_size} bytes); rebuild the index with `ekd-data reindex {self.rec_path}`"
            )
        self.keys = keys  # int64 array in .idx order
        self._offsets = offsets
        # The span of a record ends at the next record's offset (or the file end): one read per record.
        starts = np.unique(offsets)
        ends = np.append(starts[1:], self.file_size)
        self._spans = (ends - starts)[np.searchsorted(starts, offsets)]
        # Key -> row: direct arithmetic for the usual contiguous keys, binary search otherwise.
        self._first_key = int(keys[0]) if len(keys) else 0
        self._contiguous = bool(
            len(keys) == 0 or np.array_equal(keys, np.arange(self._first_key, self._first_key + len(keys)))
        )
        self._key_order = None if self._contiguous else np.argsort(keys, kind="stable")
        self._sorted_keys = None if self._contiguous else keys[self._key_order]
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _row(self, key: int) -> int:
        key = int(key)
        if self._contiguous:
            row = key - self._first_key
            if 0 <= row < len(self.keys):
                return row
        else:
            pos = int(np.searchsorted(self._sorted_keys, key))
            if pos < len(self._sorted_keys) and self._sorted_keys[pos] == key:
                return int(self._key_order[pos])
        raise RecordIOError(f"{self.idx_path}: no record with key {key}")

    def __contains__(self, key: int) -> bool:
        try:
            self._row(key)
        except RecordIOError:
            return False
        return True

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # A forked worker inherits the parent's descriptor; sharing its position (seek + read) would
            # race, so every process opens its own.
            self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = os.getpid()
        return self._fd

    def _pread(self, size: int, offset: int) -> bytes:
        fd = self._file()
        if hasattr(os, "pread"):
            return os.pread(fd, size, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)

    def offset(self, key: int) -> int:
        """Byte offset of record ``key`` in the .rec file."""
        return int(self._offsets[self._row(key)])

    def read(self, key: int) -> bytes:
        """The reassembled payload of record ``key``."""
        row = self._row(key)
        offset = int(self._offsets[row])
        buf = self._pread(int(self._spans[row]), offset)
        if len(buf) >= 8:
            magic, lrec = _FRAME.unpack_from(buf, 0)
            if magic == MAGIC and lrec >> 29 == 0 and 8 + (lrec & _LENGTH_MASK) <= len(buf):
                return buf[8 : 8 + (lrec & _LENGTH_MASK)]  # fast path: a whole record
        return decode_record(buf, 0, f"{self.rec_path} (key {key})", base=offset)[0]

    def read_header(self, key: int) -> IRHeader:
        """The IRHeader of record ``key`` (reads only its first bytes for whole records)."""
        row = self._row(key)
        offset = int(self._offsets[row])
        where = f"{self.rec_path} (key {key}, record at byte offset {offset})"
        head = self._pread(min(int(self._spans[row]), 8 + IRHEADER_SIZE + 64), offset)
        if len(head) >= 8:
            magic, lrec = _FRAME.unpack_from(head, 0)
            length = lrec & _LENGTH_MASK
            if magic == MAGIC and lrec >> 29 == 0 and length >= IRHEADER_SIZE:
                flag = _HEADER.unpack_from(head, 8)[0]
                need = IRHEADER_SIZE + 4 * flag
                if need <= length and 8 + need <= len(head):
                    return unpack_payload(head[8 : 8 + need], where)[0]
        return unpack_payload(self.read(key), where)[0]

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing sensible to do
            self.close()
