"""Hostile sources: every per-file and per-set problem is a ledger reason, never a crash or a hang.

Each test puts one kind of bad input next to a good set and checks that the bad one is rejected
with a reason a person understands, and that the good one is untouched."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tracemalloc
from pathlib import Path

import pytest

from iclora_data.ingest import (
    MAX_HINT_CHARS,
    SourceError,
    ingest,
    ledger_name,
    name_from_ledger,
)
from iclora_data.presets import PRESETS
from iclora_data.sources import read_source
from tests._images import image_set


def by_id(result) -> dict:
    return {s.set_id: s for s in result.sets}


def ledger_json(result) -> bytes:
    """The ledger as it is written: UTF-8 JSON (lone surrogates would make this raise).

    ``paths`` are locators, not ledger text: they are the names on disk (``os.fsdecode``)."""
    sets = [{k: v for k, v in s.__dict__.items() if k != "paths"} for s in result.sets]
    data = {"sets": sets, "files": [f.__dict__ for f in result.files]}
    return json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    image_set(src / "good", [1, 2])
    return src


def assert_good_untouched(result) -> None:
    good = by_id(result)["good"]
    assert good.rejection is None and good.files == ["good/1.jpg", "good/2.jpg"]


# ----- names that are not UTF-8 ---------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"caf\xe9", b"\xff\xfe", b"a\\x41b", b"back\\slash\xe9", b"plain", "日本".encode()])
def test_ledger_name_round_trips_any_bytes(raw):
    name = os.fsdecode(raw)
    shown = ledger_name(name)
    shown.encode("utf-8")  # always writable as UTF-8 text
    assert name_from_ledger(shown) == name
    assert os.fsencode(name_from_ledger(shown)) == raw


def test_names_that_are_not_utf8_are_readable_reversible_and_their_files_readable(source):
    latin1 = source / os.fsdecode(b"caf\xe9")  # a folder name from an old Windows zip
    image_set(latin1, [3, 4])
    (latin1 / "1.jpg").rename(latin1 / os.fsdecode(b"\xe91.jpg"))
    result = ingest(source)
    ledger_json(result)  # the whole ledger encodes as UTF-8
    sets = by_id(result)
    assert set(sets) == {"good", "caf\\xe9"}
    bad = sets["caf\\xe9"]
    assert bad.rejection is None
    on_disk = sorted(os.listdir(os.fsencode(source / os.fsdecode(b"caf\xe9"))))  # the oracle: the bytes on disk
    assert sorted(os.fsencode(name_from_ledger(f.split("/", 1)[1])) for f in bad.files) == on_disk
    for path in bad.paths:  # the locators still reach the real files
        assert read_source(path)[:2] == b"\xff\xd8"
    assert_good_untouched(result)


# ----- set.json --------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "reason"), [
    (b"{not json", "set.json is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "set.json is not valid JSON: nested too deeply"),
    (b'{"order": 3}', "set.json: order"),
    (b'["a", "b"]', "set.json: "),
    (b'{"panels": {"1.jpg": 5}}', "set.json: panels"),
    (b'{"colour": "red"}', "set.json: colour: Extra inputs are not permitted"),
    (b'{"caption": "caf\xe9"}', "set.json is not UTF-8 text (byte 0xE9"),
    (b'{"caption": "\\udcff"}', "not valid Unicode text"),
])
def test_every_set_json_problem_rejects_only_its_set(source, content, reason):
    image_set(source / "bad", [3, 4])
    (source / "bad" / "set.json").write_bytes(content)
    result = ingest(source)
    ledger_json(result)
    assert reason in (by_id(result)["bad"].rejection or "")
    assert_good_untouched(result)


def test_misspelt_preset_names_itself_and_the_known_ones(source):
    image_set(source / "bad", [3, 4])
    (source / "bad" / "set.json").write_text('{"preset": "film-storybord"}')
    rejection = by_id(ingest(source))["bad"].rejection or ""
    assert "film-storybord" in rejection
    assert all(name in rejection for name in PRESETS)  # the known ones, from the one list of presets


# ----- manifests -------------------------------------------------------------------------------

def manifest_source(tmp_path: Path) -> Path:
    image_set(tmp_path / "img", [1, 2, 3, 4])
    return tmp_path


def test_latin1_csv_row_is_rejected_with_its_line_number(tmp_path):
    base = manifest_source(tmp_path)
    rows = ["set_id,images,caption", "good,img/1.jpg|img/2.jpg,fine", "bad,img/3.jpg|img/4.jpg,caf\xe9 au lait",
            "after,img/3.jpg|img/4.jpg,ok"]
    (base / "sets.csv").write_bytes("\n".join(rows).encode("latin-1"))
    (base / "first.csv").write_bytes("\n".join(rows[:1] + rows[2:3]).encode("latin-1"))
    assert by_id(ingest(base / "first.csv"))["first.csv:2"].rejection.startswith("manifest line 2: ")
    sets = by_id(ingest(base / "sets.csv"))
    assert sets["good"].rejection is None and sets["after"].rejection is None
    bad = sets["sets.csv:3"].rejection or ""
    assert not any(s.startswith("sets.csv:2") for s in sets)
    assert bad.startswith("manifest line 3: the line is not UTF-8 text (byte 0xE9")


def test_csv_field_over_the_csv_limit_rejects_that_row_only(tmp_path):
    import csv

    base = manifest_source(tmp_path)
    huge = "x" * (csv.field_size_limit() + 1)
    rows = ["set_id,images,caption", "good,img/1.jpg|img/2.jpg,ok", f"big,img/3.jpg|img/4.jpg,{huge}",
            "after,img/3.jpg|img/4.jpg,ok"]
    (base / "sets.csv").write_text("\n".join(rows))
    result = ingest(base / "sets.csv")
    sets = by_id(result)
    assert sets["good"].rejection is None and sets["after"].rejection is None
    bad = [s for s in result.sets if s.set_id not in ("good", "after")]
    assert len(bad) == 1 and "line 3" in (bad[0].rejection or "") and "field larger than field limit" in \
        (bad[0].rejection or "")


def test_jsonl_rows_deep_nesting_bad_types_and_unknown_preset_are_rows_rejected(tmp_path):
    base = manifest_source(tmp_path)
    lines = [
        json.dumps({"set_id": "good", "images": ["img/1.jpg", "img/2.jpg"]}),
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"set_id": "types", "images": "img/1.jpg"}),
        json.dumps({"set_id": "preset", "images": ["img/3.jpg", "img/4.jpg"], "preset": "nope"}),
        json.dumps({"set_id": "long", "images": ["img/3.jpg", "img/4.jpg"], "caption": "w " * MAX_HINT_CHARS}),
        json.dumps({"set_id": "\udcff", "images": ["img/3.jpg", "img/4.jpg"]}),
        "caf\xe9".encode("latin-1").decode("latin-1"),
    ]
    (base / "sets.jsonl").write_bytes("\n".join(lines[:-1]).encode() + b"\ncaf\xe9\n")
    result = ingest(base / "sets.jsonl")
    ledger_json(result)
    reasons = {s.set_id: s.rejection or "" for s in result.sets}
    assert reasons["good"] == ""
    assert reasons["sets.jsonl:2"] == "manifest line 2: invalid JSON: nested too deeply"
    assert reasons["types"].startswith("manifest line 3: images")
    assert "unknown preset 'nope'" in reasons["preset"] and "film-storyboard" in reasons["preset"]
    assert "line 5" in reasons["long"] and f"at most {MAX_HINT_CHARS}" in reasons["long"]
    assert "line 6" in reasons["sets.jsonl:6"] and "not valid Unicode" in reasons["sets.jsonl:6"]
    assert reasons["sets.jsonl:7"].startswith("manifest line 7: the line is not UTF-8 text")
    assert len(result.sets) == 7


# ----- files that are not regular files ---------------------------------------------------------

@pytest.mark.timeout(60)  # a pipe that is opened blocks forever: the test fails instead of hanging
def test_pipes_sockets_and_links_to_them_are_refused_without_opening(source):
    image_set(source / "pipe", [3, 4])
    os.remove(source / "pipe" / "1.jpg")
    os.mkfifo(source / "pipe" / "1.jpg")
    image_set(source / "meta", [5, 6])
    os.mkfifo(source / "meta" / "set.json")
    image_set(source / "hint", [7, 8])
    os.mkfifo(source / "hint" / "caption.txt")
    image_set(source / "link", [9, 10])
    os.symlink(source / "pipe" / "1.jpg", source / "link" / "3.jpg")
    image_set(source / "sock", [11, 12])
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(source / "sock" / "2.jpg.sock"))
        result = ingest(source)
    finally:
        sock.close()
    sets = by_id(result)
    assert "pipe/1.jpg: a named pipe, not a regular file" in (sets["pipe"].rejection or "")
    assert "meta/set.json: a named pipe" in (sets["meta"].rejection or "")
    assert "hint/caption.txt: a named pipe" in (sets["hint"].rejection or "")
    assert "link/3.jpg: symbolic link to a named pipe" in (sets["link"].rejection or "")
    assert "sock/2.jpg.sock: a socket" in (sets["sock"].rejection or "")
    assert all("/" not in p or not Path(p).is_fifo() for s in result.sets for p in s.paths)
    assert_good_untouched(result)


# ----- hint sizes --------------------------------------------------------------------------------

def test_a_megabyte_caption_hint_rejects_its_set_without_being_read(source):
    image_set(source / "big", [3, 4])
    (source / "big" / "caption.txt").write_bytes(b"word " * 200_000)  # 1 MB
    image_set(source / "panelhint", [5, 6])
    (source / "panelhint" / "1.txt").write_text("x" * (MAX_HINT_CHARS + 1))
    image_set(source / "atcap", [7, 8])
    (source / "atcap" / "caption.txt").write_text("y" * MAX_HINT_CHARS)  # at the limit: fine
    tracemalloc.start()
    result = ingest(source)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sets = by_id(result)
    assert "caption.txt is 1,000,000 bytes" in (sets["big"].rejection or "")
    assert f"at most {MAX_HINT_CHARS} characters" in (sets["big"].rejection or "")
    assert sets["big"].caption is None
    assert "1.txt has" in (sets["panelhint"].rejection or "")
    assert sets["atcap"].rejection is None and sets["atcap"].caption == "y" * MAX_HINT_CHARS
    assert peak < 500_000  # the megabyte was never read
    assert_good_untouched(result)


# ----- OUT and SOURCE ----------------------------------------------------------------------------

def test_out_inside_source_is_skipped_and_reported(source):
    out = source / "out"
    image_set(out / "composites", [5, 6])  # what a previous build left there
    result = ingest(source, out=out)
    assert set(by_id(result)) == {"good"}
    entry = [f for f in result.files if f.path == "out/"]
    assert len(entry) == 1 and entry[0].status == "ignored" and "OUT" in entry[0].reason
    assert not any(f.path.startswith("out/composites") for f in result.files)
    shutil.rmtree(out)
    nested = source / "good" / "out"
    image_set(nested, [7])
    result = ingest(source, out=nested)
    assert [f.path for f in result.files] == ["good/out/"]
    assert_good_untouched(result)


def test_out_equal_to_source_is_refused(source):
    with pytest.raises(SourceError, match="is SOURCE itself"):
        ingest(source, out=source / "good" / "..")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_set_folder_rejects_that_set(source):
    image_set(source / "locked", [3, 4])
    os.chmod(source / "locked", 0)
    try:
        result = ingest(source)
    finally:
        os.chmod(source / "locked", 0o755)
    assert "cannot be read" in (by_id(result)["locked"].rejection or "")
    assert_good_untouched(result)


@pytest.mark.timeout(120)
def test_a_build_over_hostile_names_and_a_pipe_writes_a_utf8_ledger_and_resumes(source, tmp_path):
    """Through the whole engine: the stat cache, the store and the ledger take names that are not UTF-8."""
    from iclora_data.build import run_build
    from iclora_data.executors import SerialExecutor

    latin1 = source / os.fsdecode(b"caf\xe9")
    image_set(latin1, [3, 4])
    (latin1 / "1.jpg").rename(latin1 / os.fsdecode(b"\xe91.jpg"))
    os.mkfifo(source / "good" / "3.jpg")
    out = tmp_path / "out"
    result = run_build(source, out, {"until": "compose"}, executor=SerialExecutor())
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    on_disk = {os.fsdecode(os.path.relpath(os.path.join(d, f), os.fsencode(source)))
               for d, _, fs in os.walk(os.fsencode(source)) for f in fs}  # the oracle: os.walk over bytes
    assert {"/".join(name_from_ledger(p) for p in f["path"].split("/")) for f in report["files"]} == on_disk
    status = {s["set_id"]: s["status"] for s in report["sets"]}
    assert status == {"caf\\xe9": "kept", "good": "rejected"}
    again = run_build(source, out, {"until": "compose"}, executor=SerialExecutor())
    assert again.counts == result.counts and again.decoded_images == 0
