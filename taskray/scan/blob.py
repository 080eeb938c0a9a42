"""Parse one task blob into its member list and the few member contents detection needs.

A blob is normally a gzip'd tar of one Harbor task folder, but corpora of this kind also hold zips, JSON
and JSONL rows, plain text and junk, so every shape is classified rather than assumed. Parsing is a pure
function of the bytes and safe by construction:

- Decompression is capped (`BlobLimits.max_raw_bytes`) and members are counted (`max_members`), so a
  gzip or zip bomb becomes an error row, never an out-of-memory worker.
- Nothing is written anywhere here. Member names with `..` or an absolute path are dropped (and counted
  in `skipped`), as are links, devices and fifos; `safe_name` is what the exporter relies on too.
- Corrupt or truncated input raises nothing: it returns a ParsedBlob with `error` set.

Why a hand-written tar walker: Python's `tarfile` builds a TarInfo object per member and re-reads headers
through a file object; for millions of ~5 KB tasks that, not zlib, was the bottleneck (3.3k vs 13k
tasks/s/core). A ustar header is a fixed 512-byte record, so walking them over the decompressed buffer
costs a few slices per member, and only members that detection asks for are copied out. Those few slices
were still a fifth of a scan's CPU, so the plain case (regular files, short ASCII names, nothing to clean)
is walked in C (`_tarwalk.c`, built at install where a compiler is); everything else, and every machine
without the C module, takes `walk_tar`'s Python path, which is the reference the C one is tested against.
"""

from __future__ import annotations

import bz2
import functools
import io
import json
import lzma
import posixpath
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import deflate  # libdeflate, one call per blob: faster than zlib-ng on real tasks (gunzip is half a scan)
from zlib_ng import zlib_ng  # drop-in zlib, 2.5x faster inflate than zlib's, for everything else

try:
    from taskray.scan import _tarwalk  # C walk of plain tars; built by `pip install` where a compiler is
except ImportError:  # the Python walker below does everything, only slower
    _tarwalk = None

FORMATS = ("tar", "zip", "json", "jsonl", "text", "binary")
ROOT_MARKERS = ("task.toml", "instruction.md", "task.yaml")


@dataclass(frozen=True)
class BlobLimits:
    max_raw_bytes: int = 64 * 1024 * 1024  # per blob, after decompression
    max_members: int = 20_000
    max_kept_bytes: int = 1024 * 1024  # largest single member whose content is kept


DEFAULT_LIMITS = BlobLimits()


class BlobError(ValueError):
    """The blob is malformed or exceeds a limit; the message ends up in the catalog's `error` column."""


@dataclass(slots=True)
class ParsedBlob:
    format: str
    compressed_bytes: int
    raw_bytes: int = 0
    compression: str = "none"  # outer compression that was unwrapped: gzip, bz2, xz, zstd, none
    members: dict[str, int] = field(default_factory=dict)  # regular files: normalised name -> size
    files: dict[str, bytes] = field(default_factory=dict)  # contents of the members that were wanted
    skipped: list[str] = field(default_factory=list)  # "name: reason" for unsafe or non-regular members
    data: Any = None  # the decoded object for json, the list of rows for jsonl
    error: str | None = None

    def text(self, name: str) -> str | None:
        raw = self.files.get(name)
        return None if raw is None else raw.decode("utf-8", errors="replace")


# --- which members detection needs ---------------------------------------------------------------------
_KEPT_SUFFIXES = (".toml", ".json", ".yaml", ".yml", ".sh", ".md", ".txt", ".diff", ".patch")


@functools.lru_cache(maxsize=4096)  # a corpus's tasks share most member names: each is decided once
def wanted_for_detection(name: str) -> bool:
    """Small text members that carry verifier evidence or task metadata; code under tests/ is judged by
    name only, so it is never copied."""
    if name.endswith(".json"):
        return True  # any JSON member may carry a test field (the article looked at all of them)
    if name.count("/") > 1 and not name.startswith("tests/"):
        return False
    return name.endswith(_KEPT_SUFFIXES) or name in ("run-tests.sh", "solution.sh")


def want_all(name: str) -> bool:
    return True


# --- names ---------------------------------------------------------------------------------------------
def safe_name(name: str) -> str | None:
    """The member's name relative to the task root, or None when it could escape the root."""
    if name.startswith("./"):
        name = name[2:]
    if (
        "\\" not in name
        and ".." not in name
        and "//" not in name
        and "/." not in name
        and "\x00" not in name  # a pax path can carry one
        and name[:1] not in "/."
        and name[1:2] != ":"  # C:... is absolute on Windows
    ):
        return name.rstrip("/") or None  # the common case, decided without splitting
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or any("\x00" in p for p in parts):
        return None
    return "/".join(parts)


def _single_root(members: dict[str, int]) -> str:
    """`task-1/` when every member sits in that one top folder and it holds the task (some packers tar
    the folder, others its contents); "" otherwise, e.g. for a task that is all tests/."""
    first = next(iter(members), "")
    cut = first.find("/") + 1
    if not cut:
        return ""
    top = first[:cut]
    for n in members:
        if not n.startswith(top):
            return ""
    return top if any(n[cut:] in ROOT_MARKERS for n in members) else ""


# --- decompression -------------------------------------------------------------------------------------
def _too_big(limits: BlobLimits) -> BlobError:
    return BlobError(f"decompressed size exceeds the {limits.max_raw_bytes} byte limit (compression bomb?)")


def _find_gzip_magic(buf: bytes, start: int) -> int:
    return _tarwalk.find_gzip_magic(buf, start) if _tarwalk is not None else buf.find(b"\x1f\x8b", start)


def _gunzip_whole(data: bytes, limits: BlobLimits) -> bytes | None:
    """The usual blob, one plain gzip member, in one libdeflate call; None leaves everything else to the
    streaming path in `_gunzip`, the one place that decides what such a stream means.

    libdeflate needs the output size up front; gzip's trailer (ISIZE) gives it, and a trailer that lies
    makes libdeflate fail or stop short. It reads the first member only, so wherever another member could
    follow one (a gzip magic right after 4 bytes equal to the blob's last 4: a first member ending there
    would have the very ISIZE checked against), the streaming path reads the blob instead. So do headers
    with fields the two may check differently (FHCRC, FEXTRA)."""
    isize = data[-4:]
    size = int.from_bytes(isize, "little")
    if not 0 < size <= limits.max_raw_bytes or data[2:4] not in (b"\x08\x00", b"\x08\x08"):
        return None
    at = _find_gzip_magic(data, 10)  # in compressed bytes, 2-byte magics turn up by chance
    while at != -1:
        if data[at - 4 : at] == isize:  # the first member may end here and another start
            return None
        at = _find_gzip_magic(data, at + 1)
    try:
        out = deflate.gzip_decompress(data, size)  # checks the member's CRC-32 and ISIZE
    except deflate.DeflateError:
        return None
    return bytes(out) if len(out) == size else None


def _gunzip(data: bytes, limits: BlobLimits) -> bytes:
    whole = _gunzip_whole(data, limits)
    if whole is not None:
        return whole
    out: list[bytes] = []
    produced = 0
    while data:
        d = zlib_ng.decompressobj(wbits=31)
        try:
            chunk = d.decompress(data, limits.max_raw_bytes - produced + 1)
        except zlib_ng.error as e:
            raise BlobError(f"corrupt gzip: {e}") from None
        produced += len(chunk)
        out.append(chunk)
        if produced > limits.max_raw_bytes:
            raise _too_big(limits)
        if not d.eof:
            raise BlobError("truncated gzip stream")
        data = d.unused_data  # concatenated gzip members are one stream (RFC 1952)
        if data and data[:2] != b"\x1f\x8b":
            break  # trailing garbage after the last member: ignore, as gzip(1) does
    return b"".join(out)


def _capped(decompressor, data: bytes, limits: BlobLimits, name: str) -> bytes:
    try:
        out = decompressor.decompress(data, max_length=limits.max_raw_bytes + 1)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise BlobError(f"corrupt {name}: {e}") from None
    if len(out) > limits.max_raw_bytes:
        raise _too_big(limits)
    if not decompressor.eof:
        raise BlobError(f"truncated {name} stream")
    return out


def _unzstd(data: bytes, limits: BlobLimits) -> bytes:
    import pyarrow as pa  # pyarrow ships a zstd codec, so no extra dependency for a rare format

    try:
        stream = pa.CompressedInputStream(pa.BufferReader(data), "zstd")
        out = stream.read(limits.max_raw_bytes + 1)
    except (OSError, pa.ArrowException) as e:
        raise BlobError(f"corrupt zstd: {e}") from None
    if len(out) > limits.max_raw_bytes:
        raise _too_big(limits)
    return out


def decompress(data: bytes, limits: BlobLimits = DEFAULT_LIMITS) -> tuple[bytes, str]:
    """Unwrap an outer gzip/bz2/xz/zstd layer (at most twice: .tar.gz.gz exists), capped."""
    compression = "none"
    for _ in range(2):
        if data[:2] == b"\x1f\x8b":
            data, compression = _gunzip(data, limits), "gzip"
        elif data[:3] == b"BZh":
            data, compression = _capped(bz2.BZ2Decompressor(), data, limits, "bz2"), "bz2"
        elif data[:6] == b"\xfd7zXZ\x00":
            data, compression = _capped(lzma.LZMADecompressor(), data, limits, "xz"), "xz"
        elif data[:4] == b"\x28\xb5\x2f\xfd":
            data, compression = _unzstd(data, limits), "zstd"
        else:
            break
    return data, compression


# --- tar -----------------------------------------------------------------------------------------------
def _octal(field_: bytes) -> int:
    try:
        return int(field_.rstrip(b"\x00 "), 8)  # the common "00000001750\0", in one call
    except ValueError:
        pass
    if field_ and field_[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field_[1:], "big")
    digits = field_.split(b"\x00", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _cstr(field_: bytes) -> str:
    return field_.partition(b"\x00")[0].decode("utf-8", errors="replace")


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = _octal(header[148:156])
    except ValueError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    # some old tars summed the bytes as signed chars (tarfile accepts both)
    return stored == unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)


def looks_like_tar(buf: bytes) -> bool:
    """POSIX and GNU tars say so at byte 257 (what file(1) looks at); only pre-POSIX tars, which carry
    no magic, need the header checksum (summing 512 bytes in Python is 5% of a task's parse time)."""
    return len(buf) >= 512 and (buf[257:262] == b"ustar" or _checksum_ok(buf[:512]))


def _pax_path(records: bytes) -> str | None:
    # "%d path=value\n" records, the length counting the whole record; only the path matters to us
    pos = 0
    while pos < len(records):
        space = records.find(b" ", pos)
        if space < 0:
            break
        length = int(records[pos:space]) if records[pos:space].isdigit() else 0
        if length <= space - pos or pos + length > len(records):  # 0 would loop forever
            raise BlobError("corrupt pax header")
        key, _, value = records[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", errors="replace")
        pos += length
    return None


# name, size, typeflag, magic, prefix: the only ustar fields we read, in one unpack per header
_HEADER = struct.Struct("100s24x12s20x1s100x6s82x155s")


def walk_tar(
    buf: bytes, limits: BlobLimits, parsed: ParsedBlob, checksums: bool = True
) -> dict[str, tuple[int, int]]:
    """Member names and sizes into `parsed`; returns where each member's bytes are in `buf`.

    With `checksums` every header's checksum is verified. A gzip'd tar can skip that (summing 512 bytes
    per member costs more than the rest of the walk): gzip's CRC already guards every byte, so a header
    there only has to parse."""
    if _tarwalk is not None:
        plain = _tarwalk.walk(buf, limits.max_members, checksums)
        if plain is not None:  # None: not a plain tar, the walk below decides what it is
            members, spans, raw_bytes = plain
            parsed.members.update(members)
            parsed.raw_bytes += raw_bytes
            return spans
    off, end, count = 0, len(buf), 0
    long_name: str | None = None
    spans: dict[str, tuple[int, int]] = {}
    unpack = _HEADER.unpack_from
    while off + 512 <= end:
        if buf[off] == 0 and buf.count(0, off, off + 512) == 512:
            return spans  # end-of-archive marker
        if checksums and not _checksum_ok(buf[off : off + 512]):
            raise BlobError(f"corrupt tar header at offset {off} (bad checksum)")
        raw_name, raw_size, kind, magic, prefix = unpack(buf, off)
        try:
            size = _octal(raw_size)
        except ValueError:
            size = -1
        if size < 0:
            raise BlobError(f"corrupt tar header at offset {off}")
        start = off + 512
        if start + size > end:
            raise BlobError(f"truncated tar: member at offset {off} needs {size} bytes")
        off = start + (size + 511) // 512 * 512
        if kind in (b"L", b"x"):  # GNU long name / pax header: names the next member
            payload = buf[start : start + size]
            long_name = _cstr(payload) if kind == b"L" else (_pax_path(payload) or long_name)
            continue
        if kind == b"g":
            continue
        count += 1
        if count > limits.max_members:
            raise BlobError(f"more than {limits.max_members} members (archive bomb?)")
        name, long_name = long_name, None
        if kind == b"5":
            continue  # directories are implied by their files
        if name is None:
            name = _cstr(raw_name)
            if prefix[0] != 0 and magic[:5] == b"ustar":
                name = _cstr(prefix) + "/" + name
        norm = safe_name(name)
        if norm is None:
            parsed.skipped.append(f"{name}: unsafe path")
            continue
        if kind not in (b"0", b"\x00", b"7"):
            what = {b"1": "hard link", b"2": "symlink", b"3": "device", b"4": "device", b"6": "fifo"}
            parsed.skipped.append(f"{norm}: {what.get(kind, 'special member')}")
            continue
        parsed.members[norm] = size
        parsed.raw_bytes += size
        spans[norm] = (start, size)
    # No end-of-archive marker: fine if the last member ended cleanly (tarfile accepts that too),
    # truncated if the stream stops inside a header or a member's padding.
    if off > end or (off < end and buf.count(0, off, end) != end - off):
        raise BlobError(f"truncated tar: stream ends inside the record at offset {min(off, end)}")
    return spans


# --- zip -----------------------------------------------------------------------------------------------
def walk_zip(buf: bytes, limits: BlobLimits, parsed: ParsedBlob) -> tuple[zipfile.ZipFile, dict]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(buf))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise BlobError(f"corrupt zip: {e}") from None
    if len(infos) > limits.max_members:
        raise BlobError(f"more than {limits.max_members} members (archive bomb?)")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_raw_bytes:
        raise _too_big(limits)
    infos_by_name = {}
    for info in infos:
        if info.is_dir():
            continue
        norm = safe_name(info.filename)
        if norm is None:
            parsed.skipped.append(f"{info.filename}: unsafe path")
            continue
        mode = info.external_attr >> 16
        if mode & 0o170000 not in (0, 0o100000):  # symlink, device, fifo as recorded by Unix zip
            parsed.skipped.append(f"{norm}: not a regular file")
            continue
        parsed.members[norm] = info.file_size
        parsed.raw_bytes += info.file_size
        infos_by_name[norm] = info
    return zf, infos_by_name


def _read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limits: BlobLimits) -> bytes:
    try:
        # read past the declared size: a lying header must not let more through than the cap
        content = zf.open(info).read(limits.max_kept_bytes + 1)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, OSError, EOFError) as e:
        raise BlobError(f"corrupt zip member {name}: {e}") from None
    if len(content) > limits.max_kept_bytes:
        raise BlobError(f"zip member {name} is larger than its header says")
    return content


# --- the rest ------------------------------------------------------------------------------------------
def _text_or_binary(buf: bytes) -> str:
    sample = buf[:4096]
    if not sample:
        return "text"
    if b"\x00" in sample:
        return "binary"
    text = sample.decode("utf-8", errors="replace")
    odd = sum(1 for c in text if c == "\ufffd" or (ord(c) < 32 and c not in "\n\r\t\f"))
    return "text" if odd <= max(2, len(text) * 0.05) else "binary"


def _try_json(buf: bytes, parsed: ParsedBlob) -> bool:
    head = buf.lstrip()[:1]
    if head not in (b"{", b"["):
        return False
    text = buf.decode("utf-8", errors="replace")
    try:
        parsed.data, parsed.format = json.loads(text), "json"
        return True
    except json.JSONDecodeError:
        pass
    except RecursionError:
        raise BlobError("JSON nested too deeply to parse") from None
    rows = []
    for line in text.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                return False
            except RecursionError:
                raise BlobError("JSON nested too deeply to parse") from None
    if len(rows) < 2:
        return False
    parsed.data, parsed.format = rows, "jsonl"
    return True


def parse_blob(
    blob: bytes, want: Callable[[str], bool] = wanted_for_detection, limits: BlobLimits = DEFAULT_LIMITS
) -> ParsedBlob:
    """Classify and open one blob; never raises on bad input (see `ParsedBlob.error`)."""
    blob = bytes(blob) if blob is not None else b""
    parsed = ParsedBlob(format="binary", compressed_bytes=len(blob))
    try:
        buf, parsed.compression = decompress(blob, limits)
        parsed.raw_bytes = 0
        if buf[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            parsed.format = "zip"
            zf, infos = walk_zip(buf, limits, parsed)

            def read(name: str) -> bytes:
                return _read_zip_member(zf, infos[name], name, limits)

        elif looks_like_tar(buf):
            parsed.format = "tar"
            # gzip, bz2 and xz carry a CRC of the whole stream; a bare (or zstd) tar has only its headers'
            spans = walk_tar(buf, limits, parsed, checksums=parsed.compression in ("none", "zstd"))

            def read(name: str) -> bytes:
                start, size = spans[name]
                return buf[start : start + size]

        else:
            parsed.raw_bytes = len(buf)
            if not _try_json(buf, parsed):
                parsed.format = _text_or_binary(buf)
                if parsed.format == "text":
                    parsed.files["<text>"] = buf[: limits.max_kept_bytes]
            return parsed
        root = _single_root(parsed.members)
        if root:
            cut = len(root)
            parsed.members = {n[cut:]: size for n, size in parsed.members.items()}
        files, max_kept = parsed.files, limits.max_kept_bytes
        for name, size in parsed.members.items():
            if size <= max_kept and want(name):
                files[name] = read(root + name)
    except BlobError as e:
        parsed.error = str(e)
    except Exception as e:  # a parser bug must not take a worker down with a whole shard
        parsed.error = f"unexpected {type(e).__name__}: {e}"
    return parsed


def executable_members(blob: bytes, limits: BlobLimits = DEFAULT_LIMITS) -> set[str]:
    """Names (as `parse_blob` gives them) of the members the archive marks executable, so an extracted
    test.sh or solve.sh stays runnable. Python's tarfile reads the modes: this runs per exported or
    verified task, not per scanned one."""
    buf = decompress(blob, limits)[0]
    modes: dict[str, int] = {}
    if buf[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        with zipfile.ZipFile(io.BytesIO(buf)) as zf:
            modes = {i.filename: i.external_attr >> 16 for i in zf.infolist() if not i.is_dir()}
    elif looks_like_tar(buf):
        with tarfile.open(fileobj=io.BytesIO(buf), mode="r:") as tf:
            modes = {m.name: m.mode for m in tf.getmembers() if m.isreg()}
    named = {safe_name(n): mode for n, mode in modes.items() if safe_name(n)}
    root = _single_root(dict.fromkeys(named, 0))
    return {n[len(root) :] for n, mode in named.items() if mode & 0o111}


def normalise_join(root: str, name: str) -> str:
    """Where member `name` lands under `root`; only ever called with names from `safe_name`."""
    path = posixpath.normpath(posixpath.join(root, name))
    if not (path == root or path.startswith(root.rstrip("/") + "/")):
        raise BlobError(f"{name!r} escapes {root!r}")
    return path
