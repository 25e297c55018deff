"""Archives as SOURCE: zip/tar/tar.gz read in place, hostile entries rejected, bombs bounded,
IC-LoRA's flat jpg+txt pairs taken as ready composites."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from _http_helpers import jpeg_bytes

from iclora_data.compose import compose_set
from iclora_data.config import ComposeSettings
from iclora_data.ingest import IngestResult, ingest
from iclora_data.sources import read_source
from iclora_data.sources.settings import ArchiveSettings, SourceSettings
from iclora_data.store import RunStore

MOVIE_CAPTION = ("[MOVIE-SHOTS] In a harbour town, <Mia> waits. [SCENE-1] <Mia> on the pier; "
                 "[SCENE-2] a boat arrives; [SCENE-3] she waves.")


def ledger_paths(result: IngestResult) -> Counter[str]:
    """How often each ledger path is accounted for by ingest (sets' panels and metadata, set-aside files)."""
    paths: Counter[str] = Counter()
    for s in result.sets:
        paths.update(s.files)
        paths.update(s.meta_files)
    paths.update(f.path for f in result.files)
    return paths


def folder_of_sets() -> dict[str, bytes]:
    return {"data/alpha/1.jpg": jpeg_bytes(1), "data/alpha/2.jpg": jpeg_bytes(2), "data/alpha/10.jpg": jpeg_bytes(3),
            "data/alpha/caption.txt": b"a caption the set brought",
            "data/beta/b.jpg": jpeg_bytes(4), "data/beta/a.jpg": jpeg_bytes(5),
            "data/beta/set.json": json.dumps({"order": ["b.jpg", "a.jpg"], "task": "pairs"}).encode(),
            "data/beta/notes.pdf": b"%PDF-1.4", "data/readme.txt": b"loose",
            "__MACOSX/data/alpha/._1.jpg": b"\0\5\26\7", "data/alpha/.DS_Store": b"\0junk"}


def write_zip(path: Path, members: dict[str, bytes], extra=None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if extra:
            extra(zf)
    return path


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the hostile zip has two entries of one name on purpose
def test_zip_folder_of_sets_is_read_in_place_and_every_entry_is_accounted_for(tmp_path: Path) -> None:
    members = folder_of_sets()

    def hostile(zf: zipfile.ZipFile) -> None:
        zf.writestr("../escape.jpg", jpeg_bytes(9))
        zf.writestr("/etc/cron.d/x.jpg", jpeg_bytes(9))
        zf.writestr("data\\..\\..\\win.jpg", jpeg_bytes(9))
        link = zipfile.ZipInfo("data/alpha/link.jpg")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
        zf.writestr("data/alpha/2.jpg", jpeg_bytes(8))  # a second entry with the same name

    archive = write_zip(tmp_path / "sets.zip", members, hostile)
    spool = tmp_path / "work"
    result = ingest(archive, work_dir=spool)
    # every entry once: the oracle is zipfile's own list of members
    names = [i.filename for i in zipfile.ZipFile(archive).infolist() if not i.is_dir()]
    assert len(names) == len(set(names)) + 1  # data/alpha/2.jpg twice
    assert ledger_paths(result) == Counter(f"sets.zip/{n}" for n in dict.fromkeys(names)) \
        + Counter([f"sets.zip/data/alpha/2.jpg (entry {len(names)})"])
    reasons = {f.path: (f.status, f.reason) for f in result.files}
    assert reasons["sets.zip/../escape.jpg"] == ("rejected", "unsafe entry: '..' in its path would leave the archive")
    assert reasons["sets.zip/data\\..\\..\\win.jpg"][1] == "unsafe entry: '..' in its path would leave the archive"
    assert reasons["sets.zip//etc/cron.d/x.jpg"] == ("rejected", "unsafe entry: absolute path in the archive")
    assert reasons["sets.zip/data/alpha/link.jpg"] == ("rejected", "symbolic link in the archive (not followed)")
    assert reasons["sets.zip/data/readme.txt"][0] == "ignored"
    assert reasons["sets.zip/__MACOSX/data/alpha/._1.jpg"][0] == "ignored"
    alpha, beta = result.sets
    assert (alpha.set_id, beta.set_id) == ("alpha", "beta")  # the wrapping data/ folder is not a set
    ambiguous = "ambiguous entry: the archive holds 2 entries of this name"
    assert reasons["sets.zip/data/alpha/2.jpg"] == ("rejected", ambiguous)
    assert reasons[f"sets.zip/data/alpha/2.jpg (entry {len(names)})"] == ("rejected", ambiguous)
    assert alpha.files == ["sets.zip/data/alpha/1.jpg", "sets.zip/data/alpha/10.jpg"]
    assert [read_source(p) for p in alpha.paths] == [jpeg_bytes(1), jpeg_bytes(3)]
    assert alpha.caption == "a caption the set brought"
    assert beta.files == ["sets.zip/data/beta/b.jpg", "sets.zip/data/beta/a.jpg"] and beta.task == "pairs"
    assert not spool.exists()  # nothing extracted or spooled: zip members are read in place
    prepared = compose_set(alpha, ComposeSettings(), RunStore(tmp_path / "out"))
    assert prepared.rejection is None and prepared.composite is not None


def test_zip_bombs_are_bounded_before_inflating(tmp_path: Path) -> None:
    members = {"s/1.jpg": jpeg_bytes(1), "s/2.jpg": jpeg_bytes(2), "s/3.jpg": b"\0" * 5_000_000}
    archive = write_zip(tmp_path / "bomb.zip", members)
    result = ingest(archive, work_dir=tmp_path / "w")
    reasons = {f.path: f.reason for f in result.files}
    info = zipfile.ZipFile(archive).getinfo("s/3.jpg")
    ratio = info.file_size / info.compress_size
    assert ratio > 100
    assert reasons["bomb.zip/s/3.jpg"] == \
        f"compression ratio {ratio:,.0f}:1 is over the limit of 100:1 (zip bomb guard)"
    small = SourceSettings(archive=ArchiveSettings(max_member_bytes=1000, max_total_bytes=10**9))
    reasons = {f.path: f.reason for f in ingest(archive, settings=small, work_dir=tmp_path / "w").files}
    assert reasons["bomb.zip/s/1.jpg"].startswith("too large: declares")
    total = SourceSettings(archive=ArchiveSettings(max_total_bytes=len(jpeg_bytes(1)) + 10))
    reasons = {f.path: f.reason for f in ingest(archive, settings=total, work_dir=tmp_path / "w").files}
    assert "bomb.zip/s/1.jpg" not in reasons and reasons["bomb.zip/s/2.jpg"].startswith("over the archive limit")


def test_a_zip_member_that_inflates_past_its_declared_size_is_not_read_past_it(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "lie.zip", {"s/1.jpg": jpeg_bytes(1), "s/2.jpg": jpeg_bytes(2)})
    raw = bytearray(archive.read_bytes())
    info = zipfile.ZipFile(archive).getinfo("s/2.jpg")
    # shrink the declared size in the central directory: the data inflates to more than it says
    cd = raw.rfind(b"PK\x01\x02")
    assert raw[cd + 46: cd + 46 + len(b"s/2.jpg")] == b"s/2.jpg"
    raw[cd + 24: cd + 28] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    result = ingest(archive, work_dir=tmp_path / "w")
    with pytest.raises(OSError):
        read_source(result.sets[0].paths[1])
    assert info.file_size > 1000


def tar_of(path: Path, members: dict[str, bytes], mode: str, hostile: bool = True) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        if hostile:
            for name in ("../../escape.jpg", "/abs.jpg"):
                ti = tarfile.TarInfo(name)
                ti.size = 3
                tf.addfile(ti, io.BytesIO(b"abc"))
            link = tarfile.TarInfo("data/alpha/link.jpg")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(link)
            fifo = tarfile.TarInfo("data/alpha/pipe")
            fifo.type = tarfile.FIFOTYPE
            tf.addfile(fifo)
    return path


@pytest.mark.parametrize(("name", "mode", "in_place"), [("sets.tar", "w", True), ("sets.tar.gz", "w:gz", False)])
def test_tar_archives(tmp_path: Path, name: str, mode: str, in_place: bool) -> None:
    members = folder_of_sets()
    archive = tar_of(tmp_path / name, members, mode)
    result = ingest(archive, work_dir=tmp_path / "w")
    with tarfile.open(archive) as tf:  # the oracle: tarfile's own list of non-folder members
        names = [m.name for m in tf.getmembers() if not m.isdir()]
    assert ledger_paths(result) == Counter(f"{name}/{n}" for n in names)
    reasons = {f.path: f.reason for f in result.files}
    assert reasons[f"{name}/../../escape.jpg"] == "unsafe entry: '..' in its path would leave the archive"
    assert reasons[f"{name}//abs.jpg"] == "unsafe entry: absolute path in the archive"
    assert reasons[f"{name}/data/alpha/link.jpg"] == "link in the archive (not followed)"
    assert reasons[f"{name}/data/alpha/pipe"] == "not a regular file (device, pipe or special entry)"
    alpha = result.sets[0]
    assert [read_source(p) for p in alpha.paths] == [members[f"data/alpha/{n}"] for n in ("1.jpg", "2.jpg", "10.jpg")]
    assert all(p.startswith("tar:") for p in alpha.paths) is in_place
    # a compressed tar has no random access: its members were spooled once, by content
    assert (tmp_path / "w" / "spool").exists() is not in_place


def test_tar_gz_bomb_is_bounded_by_member_size_and_expansion(tmp_path: Path) -> None:
    members = {"s/1.jpg": jpeg_bytes(1), "s/2.jpg": jpeg_bytes(2),
               "s/z1.jpg": b"\0" * 6_000_000, "s/z2.jpg": b"\0" * 6_000_000}
    archive = tar_of(tmp_path / "bomb.tar.gz", members, "w:gz", hostile=False)
    result = ingest(archive, work_dir=tmp_path / "w")
    reasons = {f.path: f.reason for f in result.files}
    assert "bomb.tar.gz/s/z1.jpg" not in reasons  # 6 MB: under the 10 MB floor of the expansion bound
    assert reasons["bomb.tar.gz/s/z2.jpg"] == \
        "the archive expands to more than 100 times its compressed size (bomb guard)"
    small = SourceSettings(archive=ArchiveSettings(max_member_bytes=1_000_000))
    reasons = {f.path: f.reason for f in ingest(archive, settings=small, work_dir=tmp_path / "w").files}
    assert reasons["bomb.tar.gz/s/z1.jpg"].startswith("too large: 6 MB uncompressed")


def iclora_pairs() -> dict[str, bytes]:
    return {"movie/1.jpg": jpeg_bytes(1, (256, 768)), "movie/1.txt": MOVIE_CAPTION.encode(),
            "movie/2.jpg": jpeg_bytes(2, (512, 256)), "movie/2.txt": b"two panels of a product, no tags",
            "movie/3.txt": b"a caption whose image is missing"}


def test_iclora_pairs_zip_gives_ready_composites(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "movie.zip", iclora_pairs())
    result = ingest(archive, work_dir=tmp_path / "w")
    first, second = result.sets
    assert (first.set_id, first.files, first.meta_files) == ("1", ["movie.zip/movie/1.jpg"], ["movie.zip/movie/1.txt"])
    assert first.caption == MOVIE_CAPTION and first.composite_grid == "3x1" and first.rejection is None
    assert second.rejection and "needs its grid" in second.rejection
    assert {f.path: f.status for f in result.files} == {"movie.zip/movie/3.txt": "ignored"}
    given = ingest(archive, work_dir=tmp_path / "w", grid="1x2")
    assert [s.composite_grid for s in given.sets] == ["1x2", "1x2"] and not any(s.rejection for s in given.sets)


def test_an_unzipped_folder_of_pairs_is_ready_composites_too(tmp_path: Path) -> None:
    root = tmp_path / "movie"
    for name, data in iclora_pairs().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    result = ingest(root, grid="1x2")
    assert [s.set_id for s in result.sets] == ["1", "2"] and result.sets[0].composite_grid == "1x2"
    assert read_source(result.sets[0].paths[0]) == jpeg_bytes(1, (256, 768))
    assert ledger_paths(result) == Counter(["1.jpg", "1.txt", "2.jpg", "2.txt", "3.txt"])


def test_an_archive_sets_hints_are_capped_like_a_folder_sets(tmp_path: Path) -> None:
    """A 1 MB caption.txt or panel hint in a zip rejects its set (it would go into the captioner's prompt),
    with the same reason a folder set gets; its neighbour is kept."""
    from iclora_data.ingest import MAX_HINT_CHARS

    huge = ("word " * (MAX_HINT_CHARS // 2)).encode()
    archive = write_zip(tmp_path / "sets.zip", {
        "big/1.jpg": jpeg_bytes(1), "big/2.jpg": jpeg_bytes(2), "big/caption.txt": huge,
        "hint/1.jpg": jpeg_bytes(3), "hint/2.jpg": jpeg_bytes(4), "hint/2.txt": huge,
        "fine/1.jpg": jpeg_bytes(5), "fine/2.jpg": jpeg_bytes(6), "fine/caption.txt": b"a short caption"})
    sets = {s.set_id: s for s in ingest(archive).sets}
    assert f"a caption hint may have at most {MAX_HINT_CHARS}" in (sets["big"].rejection or "")
    assert f"a caption hint may have at most {MAX_HINT_CHARS}" in (sets["hint"].rejection or "")
    assert sets["big"].caption is None and sets["hint"].panel_hints is None  # nothing of it goes on
    assert sets["fine"].rejection is None and sets["fine"].caption == "a short caption"
