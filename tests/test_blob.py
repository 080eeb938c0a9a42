"""Blob parsing: every format, and every way a blob can be hostile or broken."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import random
import tarfile
import tracemalloc
import zipfile

import pytest

from taskray.scan import blob as blob_module
from taskray.scan.blob import FORMATS, BlobLimits, ParsedBlob, parse_blob, safe_name, want_all
from taskray.scan.synth import EXPECTED_KIND, make_blob

FILES = {"instruction.md": "Do it.\n", "task.toml": 'version = "1.0"\n', "tests/test.sh": "echo 1\n"}


def make_tar(files: dict[str, str], prefix: str = "./", fmt=tarfile.GNU_FORMAT, extra=()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def make_zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


@pytest.mark.parametrize(
    "wrap, compression",
    [
        (lambda b: gzip.compress(b), "gzip"),
        (lambda b: bz2.compress(b), "bz2"),
        (lambda b: lzma.compress(b), "xz"),
        (lambda b: b, "none"),
    ],
)
def test_tar_in_any_compression(wrap, compression):
    parsed = parse_blob(wrap(make_tar(FILES)))
    assert parsed.error is None
    assert (parsed.format, parsed.compression) == ("tar", compression)
    assert parsed.members == {n: len(c) for n, c in FILES.items()}
    assert parsed.text("tests/test.sh") == "echo 1\n"
    assert parsed.raw_bytes == sum(len(c) for c in FILES.values())


def test_zstd_tar_via_pyarrow_codec():
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(make_tar(FILES))
    parsed = parse_blob(sink.getvalue().to_pybytes())
    assert (parsed.format, parsed.compression, parsed.error) == ("tar", "zstd", None)
    assert set(parsed.members) == set(FILES)


def test_pax_and_long_names_and_ustar_prefix():
    long_name = "tests/" + "d" * 120 + "/test_deep.py"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        parsed = parse_blob(gzip.compress(make_tar({**FILES, long_name: "x"}, fmt=fmt)))
        assert parsed.error is None, fmt
        assert long_name in parsed.members, fmt


def test_single_top_folder_is_stripped_but_meaningful_folders_are_not():
    parsed = parse_blob(gzip.compress(make_tar(FILES, prefix="my-task/")))
    assert set(parsed.members) == set(FILES)
    only_tests = parse_blob(gzip.compress(make_tar({"tests/a.py": "x", "tests/b.py": "y"})))
    assert set(only_tests.members) == {"tests/a.py", "tests/b.py"}


def test_zip_members_and_contents():
    parsed = parse_blob(make_zip(FILES))
    assert (parsed.format, parsed.error) == ("zip", None)
    assert parsed.text("instruction.md") == "Do it.\n"


def test_json_jsonl_text_binary():
    assert parse_blob(json.dumps({"tests": [1]}).encode()).format == "json"
    jsonl = parse_blob(gzip.compress(b'{"a": 1}\n{"a": 2}\n'))
    assert (jsonl.format, jsonl.data, jsonl.compression) == ("jsonl", [{"a": 1}, {"a": 2}], "gzip")
    assert parse_blob("Just a question, with ünïcode.\n".encode()).format == "text"
    assert parse_blob(bytes(range(256)) * 4).format == "binary"
    assert parse_blob(b"").format == "text"
    # invalid UTF-8 is decoded with replacement, never an exception
    text = parse_blob(b"caf\xe9 au lait\n")
    assert text.format == "text" and "\ufffd" in text.text("<text>")


def test_gzip_bomb_is_an_error_row_with_bounded_memory():
    limits = BlobLimits(max_raw_bytes=8 * 1024 * 1024)
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), 9)  # 200 MiB behind ~200 KB
    tracemalloc.start()
    parsed = parse_blob(bomb, limits=limits)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert parsed.error and "limit" in parsed.error
    assert peak < 4 * limits.max_raw_bytes  # never near the 200 MiB the bomb holds


def _gunzipped(stream: bytes, limits: BlobLimits = blob_module.DEFAULT_LIMITS) -> bytes | str:
    try:
        return blob_module._gunzip(stream, limits)
    except blob_module.BlobError as e:
        return f"error: {e}"


@pytest.mark.parametrize("c_module", [True, False])
def test_whole_buffer_gunzip_reads_what_the_streaming_one_reads(monkeypatch, c_module):
    """libdeflate's one-call path gives the bytes, or the error, that zlib-ng's streaming path gives for
    every shape of gzip stream: what it cannot take whole, it leaves to the streaming path."""
    if not c_module:
        monkeypatch.setattr(blob_module, "_tarwalk", None)  # the magic is looked for in Python
    tar, jsonl = gzip.compress(make_tar(FILES)), gzip.compress(b'{"a": 1}\n{"a": 2}\n')
    named = io.BytesIO()
    with gzip.GzipFile("task.tar", "wb", fileobj=named, mtime=0) as f:  # FNAME in the header
        f.write(make_tar(FILES))
    with_header_crc = bytearray(tar)
    with_header_crc[3] |= 0x02  # FHCRC, its two bytes after the header
    with_header_crc[10:10] = (gzip.zlib.crc32(bytes(with_header_crc[:10])) & 0xFFFF).to_bytes(2, "little")
    size = int.from_bytes(tar[-4:], "little")
    streams = {
        "one member": tar,
        "two members": tar + jsonl,
        "the same member twice": jsonl + jsonl,
        "trailing garbage": tar + b"garbage",
        "trailing zeros": tar + bytes(64),
        "trailing gzip magic": tar + b"\x1f\x8b" + bytes(8),
        "a file name": named.getvalue(),
        "a header CRC": bytes(with_header_crc),
        "ISIZE too small": tar[:-4] + (size - 1).to_bytes(4, "little"),
        "ISIZE too large": tar[:-4] + (size + 1).to_bytes(4, "little"),
        "ISIZE zero": tar[:-4] + bytes(4),
        "CRC wrong": tar[:-8] + bytes(4) + tar[-4:],
        "nothing inside": gzip.compress(b""),
        "truncated": tar[:-3],
        "corrupt": tar[:20] + bytes(40) + tar[60:],
    }
    whole = {name: _gunzipped(stream) for name, stream in streams.items()}
    for usual in (tar, named.getvalue()):  # the path under test takes the usual blobs
        assert blob_module._gunzip_whole(usual, blob_module.DEFAULT_LIMITS) is not None
    small = BlobLimits(max_raw_bytes=size - 1)
    bomb = _gunzipped(tar, small)
    monkeypatch.setattr(blob_module, "_gunzip_whole", lambda data, limits: None)
    assert whole == {name: _gunzipped(stream) for name, stream in streams.items()}
    assert bomb == _gunzipped(tar, small) and "limit" in bomb


def test_zip_bomb_by_declared_size_and_by_member_count():
    limits = BlobLimits(max_raw_bytes=4 * 1024 * 1024, max_members=100)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", b"\0" * (8 * 1024 * 1024))
    assert "limit" in parse_blob(buf.getvalue(), limits=limits).error
    many = make_zip({f"f{i}.txt": "x" for i in range(101)})
    assert "members" in parse_blob(many, limits=limits).error
    many_tar = gzip.compress(make_tar({f"f{i}.txt": "x" for i in range(101)}))
    assert "members" in parse_blob(many_tar, limits=limits).error


def test_zip_member_lying_about_its_size_is_caught():
    limits = BlobLimits(max_kept_bytes=1000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("task.toml", b"a" * 5000)
    data = bytearray(buf.getvalue())
    # shrink the declared uncompressed size in the central directory to 10 bytes
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    parsed = parse_blob(bytes(data), limits=limits)
    # zipfile stops at the declared size, then the CRC of the short read does not match: an error row
    assert parsed.error and "task.toml" in parsed.error


@pytest.mark.parametrize(
    "name",
    ["../evil.sh", "a/../../evil.sh", "/etc/passwd", "..", "./../x", "a\\..\\..\\x", "C:x", "a\x00b"],
)
def test_unsafe_names_are_refused(name):
    assert safe_name(name) is None


@pytest.mark.parametrize(
    "name, expected",
    [("./a/b.txt", "a/b.txt"), ("a//b", "a/b"), ("a/./b", "a/b"), ("dir/", "dir"), (".hidden", ".hidden")],
)
def test_safe_names_are_normalised(name, expected):
    assert safe_name(name) == expected


def test_traversal_links_and_devices_are_skipped_not_kept():
    sym = tarfile.TarInfo("./tests/link")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("./tests/hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../../etc/shadow"
    dev = tarfile.TarInfo("./dev/sda")
    dev.type = tarfile.BLKTYPE
    fifo = tarfile.TarInfo("./pipe")
    fifo.type = tarfile.FIFOTYPE
    tar = make_tar({**FILES, "../../escape.sh": "x"}, extra=[sym, hard, dev, fifo])
    parsed = parse_blob(gzip.compress(tar), want=want_all)
    assert parsed.error is None
    assert set(parsed.members) == set(FILES)
    assert set(parsed.files) == set(FILES)
    reasons = " ".join(parsed.skipped)
    for what in ("unsafe path", "symlink", "hard link", "device", "fifo"):
        assert what in reasons


def test_absolute_member_name_written_by_hand_is_skipped():
    info = tarfile.TarInfo("XXXXXXXXXXXX")
    info.size = 2
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"hi"))
    raw = bytearray(buf.getvalue())
    raw[0:12] = b"/etc/crontab"
    raw[148:156] = b"        "
    raw[148:155] = f"{sum(raw[:512]):06o}\0".encode()
    parsed = parse_blob(bytes(raw))
    assert parsed.error is None and parsed.members == {} and "/etc/crontab: unsafe path" in parsed.skipped


def test_truncated_and_corrupt_blobs_become_errors():
    good = gzip.compress(make_tar(FILES))
    for cut in (10, 30, len(good) // 2, len(good) - 4):
        assert parse_blob(good[:cut]).error, cut
    uncompressed = make_tar(FILES)
    assert "truncated" in parse_blob(uncompressed[:700]).error
    assert "corrupt" in parse_blob(b"\x1f\x8b\x08\x00garbage-garbage-garbage").error
    assert parse_blob(b"BZh9" + b"\x00" * 50).error
    assert parse_blob(b"PK\x03\x04" + b"\x00" * 50).error


def _with_header_field(tar: bytes, start: int, value: bytes) -> bytes:
    """`tar` with bytes [start, start+len(value)) of its first header replaced, checksum made right."""
    raw = bytearray(tar)
    raw[start : start + len(value)] = value
    raw[148:156] = b"        "
    raw[148:155] = f"{sum(raw[:512]):06o}\0".encode()
    return bytes(raw)


def test_pax_header_with_a_zero_length_record_is_an_error_not_a_hang():
    pax = make_tar({"task.toml": "x"}, fmt=tarfile.PAX_FORMAT, extra=())
    info = tarfile.TarInfo("./PaxHeaders/x")
    info.type, info.size = tarfile.XHDTYPE, 10
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"0 mtime=1\n"))
    hand_made = buf.getvalue()[:1024] + pax
    for blob in (hand_made, gzip.compress(hand_made)):
        assert parse_blob(blob).error == "corrupt pax header"


@pytest.mark.parametrize(
    "size_field, size",
    [
        (b"00000000002\0", 2),
        (b"          2 ", 2),
        (b"2\0\0\0\0\0\0\0\0\0\0\0", 2),
        (b"\x80" + b"\0" * 10 + b"\x02", 2),
    ],
)
def test_tar_size_fields_in_every_encoding(size_field, size):
    """Zero-padded octal (tarfile), space-padded and NUL-terminated octal (other tars), GNU base-256."""
    blob = _with_header_field(make_tar({"a.txt": "hi"}, prefix=""), 124, size_field)
    assert parse_blob(blob).members == {"a.txt": size}


def test_flipped_header_bytes_in_an_uncompressed_tar_are_caught_by_the_checksum():
    """A bare tar has no CRC around it, so its header checksums are verified (a gzip'd one skips that)."""
    rng = random.Random(3)
    good = make_tar(FILES)
    for _ in range(200):
        blob = bytearray(good)
        blob[rng.randrange(512)] ^= 1 << rng.randrange(8)
        if blob[148:156] == good[148:156]:
            parsed = parse_blob(bytes(blob))  # a flip in the magic makes it "not a tar" instead
            assert parsed.format != "tar" or "corrupt tar header at offset 0" in parsed.error


def test_random_bytes_never_raise():
    """Flipped bytes and noise are classified or become error rows, never a parser crash (which
    parse_blob would report as an "unexpected ..." error)."""
    rng = random.Random(7)
    good = gzip.compress(make_tar(FILES))
    blobs = []
    for _ in range(300):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        blobs.append(bytes(blob))
    blobs += [rng.randbytes(rng.randint(0, 2000)) for _ in range(200)]
    for blob in blobs:
        parsed = parse_blob(blob)
        assert parsed.format in FORMATS
        assert not (parsed.error or "").startswith("unexpected"), parsed.error


def test_only_wanted_members_are_copied():
    parsed = parse_blob(
        gzip.compress(make_tar({**FILES, "environment/big.bin": "z" * 5000, "tests/test_x.py": "p"}))
    )
    assert "environment/big.bin" in parsed.members and "environment/big.bin" not in parsed.files
    assert "tests/test_x.py" not in parsed.files  # judged by name only
    assert {"instruction.md", "task.toml", "tests/test.sh"} <= set(parsed.files)


# --- the C tar walker (taskray/_tarwalk.c) -----------------------------------------------------------
def test_the_c_walker_is_built_where_ci_runs():
    if blob_module._tarwalk is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs with a C compiler, so taskray._tarwalk must be built and tested")
        pytest.skip("taskray._tarwalk is not built here (no C compiler at install): Python walks tars")


def _fields(parsed: ParsedBlob) -> dict:
    fields = {name: getattr(parsed, name) for name in ParsedBlob.__slots__}
    fields["members"] = list(parsed.members.items())  # order matters too: it picks the single root
    return fields


def _hostile_tars() -> list[tuple[bytes, BlobLimits]]:
    """Tars at and past the edge of "plain": the C walker must hand most of them to Python, and get the
    others (a duplicate member, a folder written as a file, no end-of-archive marker) right itself."""
    sym = tarfile.TarInfo("./tests/link")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
    folder = tarfile.TarInfo("./tests")
    folder.type = tarfile.DIRTYPE
    long_name = "tests/" + "d" * 120 + "/test_deep.py"
    tars = [make_tar({**FILES, long_name: "x"}, fmt=fmt) for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT)]
    tars += [
        make_tar(FILES, extra=[sym, folder]),
        make_tar({**FILES, "../../escape.sh": "x", "a//b": "y", "C:/x": "z", "back\\slash": "w"}),
        make_tar({**FILES, "caf\u00e9/r\u00e9sum\u00e9.md": "\u00e9"}),  # non-ASCII names
        make_tar({**FILES, "tests/test.sh": "again"}),  # a duplicate member
        make_tar({"dir/": "", **FILES}, prefix=""),  # a folder written as a regular file
        make_tar(FILES, prefix="my-task/"),
        make_tar(FILES)[:-1024],  # no end-of-archive marker
        make_tar(FILES)[:1500],  # truncated inside a member
        make_tar(FILES) + b"trailing garbage",
    ]
    tars += [
        _with_header_field(make_tar({"a.txt": "hi"}, prefix=""), 124, f)
        for f in (b"          2 ", b"\x80" + b"\0" * 10 + b"\x02", b"0000000000x\0")
    ]
    rng = random.Random(11)
    for _ in range(100):  # flipped header bytes: bad checksums, odd fields, odd type flags
        raw = bytearray(make_tar(FILES))
        raw[rng.randrange(512)] ^= 1 << rng.randrange(8)
        tars.append(bytes(raw))
    cases = [(t, BlobLimits()) for t in tars] + [(make_tar(FILES), BlobLimits(max_members=2))]
    return cases + [(gzip.compress(t), limits) for t, limits in cases]


def test_the_c_walker_gives_exactly_what_the_python_walker_gives(monkeypatch):
    """Every family of the synthetic corpus and every hostile tar, parsed with the C walker and with
    the Python one: identical results, field by field. The C walker must also do most of the plain
    ones itself, or this test would only be comparing Python with Python."""
    if blob_module._tarwalk is None:
        pytest.skip("taskray._tarwalk is not built here")
    rng = random.Random(5)
    cases = [(make_blob(family, n, rng), BlobLimits()) for family in EXPECTED_KIND for n in range(5)]
    cases += _hostile_tars()
    c_walker, walked_in_c = blob_module._tarwalk, []

    class CountingWalker:  # the real C walker, noting each blob it took on itself
        find_gzip_magic = staticmethod(c_walker.find_gzip_magic)

        @staticmethod
        def walk(*args):
            plain = c_walker.walk(*args)
            walked_in_c.append(plain is not None)
            return plain

    for blob, limits in cases:
        for want in (blob_module.wanted_for_detection, want_all):
            with monkeypatch.context() as m:
                m.setattr(blob_module, "_tarwalk", CountingWalker)
                fast = parse_blob(blob, want=want, limits=limits)
                m.setattr(blob_module, "_tarwalk", None)
                slow = parse_blob(blob, want=want, limits=limits)
            assert _fields(fast) == _fields(slow), blob[:80]
    assert sum(walked_in_c) >= 2 * len(EXPECTED_KIND) * 3, sum(walked_in_c)
