"""``shardpipe write`` on CSV and JSONL lists as spreadsheets and scripts save them, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from shardpipe.devtools.synth import make_jpeg

REPO = Path(__file__).resolve().parents[1]


def write(*args: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m shardpipe.cli write ARGS --no-progress --no-shuffle``."""
    argv = [sys.executable, "-m", "shardpipe.cli", "write", *map(str, args), "--no-progress", "--no-shuffle"]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)


def labels(out: Path) -> dict[str, bytes]:
    """The ``.cls`` members of the shards in ``out``, by name."""
    found = {}
    for shard in sorted(out.glob("s-*.tar")):
        with tarfile.open(shard) as tar:
            found.update({m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".cls")})
    return found


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """``tmp_path/img/{0..3}.jpg``."""
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(make_jpeg(i, plain=True))
    return tmp_path


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_list_saved_with_a_byte_order_mark_is_read_like_one_without(photos: Path, kind: str):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark: the header must still be the header."""
    if kind == "csv":
        text = "path,label\r\nimg/0.jpg,cat\r\nimg/1.jpg,dog\r\n"
    else:
        text = '{"path": "img/0.jpg", "label": "cat"}\n{"path": "img/1.jpg", "label": "dog"}\n'
    listing = photos / f"list.{kind}"
    listing.write_bytes(b"\xef\xbb\xbf" + text.encode())
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 0, run.stderr
    assert "skipped: nothing" in run.stdout
    assert manifest(photos / "out")["class_names"] == ["cat", "dog"]
    assert labels(photos / "out") == {"img/0.cls": b"0", "img/1.cls": b"1"}


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_list_that_is_not_utf8_is_refused_naming_the_file_and_line(photos: Path, kind: str):
    rows = ["img/0.jpg,dog", "img/1.jpg,caf\xe9"] if kind == "csv" else ['{"path": "img/0.jpg", "label": "caf\xe9"}']
    listing = photos / f"list.{kind}"
    listing.write_bytes("\n".join(["path,label", *rows] if kind == "csv" else rows).encode("cp1252") + b"\n")
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 2
    line = 3 if kind == "csv" else 1
    assert f"error: {listing}:{line}: not UTF-8 text (byte 0xe9): save the list as UTF-8" in run.stderr
    assert "Traceback" not in run.stderr and not (photos / "out" / "manifest.json").exists()


def test_a_csv_header_with_a_label_column_but_no_known_path_column_is_refused(photos: Path):
    """Read as a data row, such a header became a skipped image and its label cell a class, shifting the others."""
    listing = photos / "list.csv"
    listing.write_text("filepath,class\nimg/0.jpg,dog\nimg/1.jpg,cat\n")
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 2
    assert (
        f"error: {listing}:1: the header (filepath, class) names no path column: "
        "name the image column one of path, file, filename, image, img, image_path"
    ) in run.stderr
    assert not (photos / "out" / "manifest.json").exists()
    listing.write_text("img/0.jpg,dog\nimg/1.jpg,cat\n")  # no header at all: column 1 path, column 2 label
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 0 and manifest(photos / "out")["class_names"] == ["cat", "dog"], run.stderr


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_whole_float_labels_are_the_integers_they_stand_for(photos: Path, kind: str):
    """pandas writes an integer column with a gap as floats (``10.0``, empty or null): they are integers, not
    class names sorted as text ("10.0" before "2.0"), which gave every image another label."""
    values = ["3.0", "", "10.0", "2.0"] if kind == "csv" else [3.0, None, 10.0, 2.0]
    listing = photos / f"list.{kind}"
    if kind == "csv":
        listing.write_text("path,label\n" + "".join(f"img/{i}.jpg,{v}\n" for i, v in enumerate(values)))
    else:
        listing.write_text(
            "".join(json.dumps({"path": f"img/{i}.jpg", "label": v}) + "\n" for i, v in enumerate(values))
        )
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 0, run.stderr
    assert labels(photos / "out") == {"img/0.cls": b"3", "img/2.cls": b"10", "img/3.cls": b"2"}
    assert manifest(photos / "out")["class_names"] is None


def test_a_jsonl_path_label_or_key_that_is_an_array_or_object_is_a_listed_skip(photos: Path):
    """str() of one named a file ("['img/0.jpg']"), a class ("[1]", beside the others) or a key."""
    rows = [
        {"path": "img/0.jpg", "label": [1]},
        {"path": ["img/1.jpg"], "label": 0},
        {"path": "img/2.jpg", "label": 0, "key": {"id": 2}},
        {"path": "img/3.jpg", "label": 1},
    ]
    listing = photos / "list.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 0, run.stderr
    assert "list.jsonl:1: label is an array, not a single value" in run.stdout
    assert "list.jsonl:2: path is an array, not a single value" in run.stdout
    assert "list.jsonl:3: key is an object, not a single value" in run.stdout
    assert labels(photos / "out") == {"img/3.cls": b"1"} and manifest(photos / "out")["class_names"] is None


def test_csv_messages_name_the_line_an_editor_shows_after_a_cell_with_line_breaks(photos: Path):
    """A quoted cell holding line breaks is one row over several lines: the row counter named line 3 for a row
    on line 4, and drifted further with each such cell."""
    listing = photos / "list.csv"
    listing.write_text(
        'path,label,caption\nimg/0.jpg,0,"a cat\non two lines"\nimg/1.jpg,1,ok,extra\n,1,no path\n'
        'img/2.jpg,0,"three\nline\ncaption"\nimg/3.jpg,1,x,y\n'
    )
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 0, run.stderr
    assert "  list.csv:4: 4 columns, but the header has 3" in run.stdout
    assert "  list.csv:5: no path field (one of path, file, filename, image, img, image_path)" in run.stdout
    assert "  list.csv:9: 4 columns, but the header has 3" in run.stdout
    with tarfile.open(photos / "out" / "s-00.tar") as tar:
        captions = {m.name: json.load(tar.extractfile(m))["caption"] for m in tar if m.name.endswith(".json")}
    assert captions == {"img/0.json": "a cat\non two lines", "img/2.json": "three\nline\ncaption"}
    listing.write_bytes(b'path,caption\nimg/0.jpg,"two\nlines"\nimg/1.jpg,caf\xe9\n')
    run = write(listing, photos / "out2" / "s-%02d.tar")
    assert run.returncode == 2
    assert f"error: {listing}:4: not UTF-8 text (byte 0xe9)" in run.stderr


@pytest.mark.parametrize(("sep", "name"), [(";", "semicolon"), ("\t", "tab"), ("|", "vertical bar")])
def test_a_csv_separated_by_another_character_is_read_by_its_columns(photos: Path, sep: str, name: str):
    """European spreadsheets save CSV with semicolons: read with commas, each row was one cell naming no file,
    so every row was skipped as 'cannot read'. The summary says which separator was used."""
    listing = photos / "list.csv"
    rows = ["path;label;caption", "img/0.jpg;cat;a cat, asleep", "img/1.jpg;dog;a dog"]
    listing.write_text("".join(row.replace(";", sep) + "\n" for row in rows))
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 0, run.stderr
    assert f"read: list.csv: {name}-separated (found in its first line)" in run.stdout
    assert "skipped: nothing" in run.stdout
    assert labels(photos / "out") == {"img/0.cls": b"0", "img/1.cls": b"1"}
    assert manifest(photos / "out")["class_names"] == ["cat", "dog"]


def test_a_comma_separated_csv_says_so_and_a_header_naming_columns_decides(photos: Path):
    listing = photos / "list.csv"
    listing.write_text("path,label,note (a;b)\nimg/0.jpg,3,x\n")  # commas split it into known names; semicolons not
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 0, run.stderr
    assert "read: list.csv: comma-separated (found in its first line)" in run.stdout
    assert labels(photos / "out") == {"img/0.cls": b"3"}


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (
            "img/0.jpg,dog;cat",
            "1: cannot tell how the columns are separated: the first line splits at a comma and at a semicolon: "
            "start the list with a header naming its columns (path,label)",
        ),
        (
            "path label",
            "1: the header (path label) is one column: separate its columns with a comma, semicolon, tab or "
            "vertical bar",
        ),
    ],
)
def test_a_csv_whose_first_line_cannot_be_split_is_refused(photos: Path, first: str, message: str):
    """Guessing would read every row wrong (each a skip, or a label taken from the wrong cell)."""
    listing = photos / "list.csv"
    listing.write_text(f"\n{first}\nimg/1.jpg,dog\n")
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 2
    assert f"shardpipe write: error: {listing}:{message.replace('1:', '2:', 1)}" in run.stderr
    assert "Traceback" not in run.stderr and not (photos / "out").exists()


def test_rows_repeating_an_image_are_written_with_one_warning_naming_the_lines(photos: Path):
    """A repeated row oversamples (or is a mistake): written, said once with the count and the first lines."""
    rows = ["img/0.jpg,1", "img/1.jpg,2", "./img/0.jpg,1", "img/2.jpg,0", "img/1.jpg,3"]
    rows += [f"img/3.jpg,{i}" for i in range(6)]  # line 7 first names img/3.jpg; lines 8-12 repeat it
    (photos / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    run = write(photos / "list.csv", photos / "out" / "s-%02d.tar")
    assert run.returncode == 0, run.stderr
    note = (
        "list.csv: 7 rows repeat an earlier row's image (line 4 repeats line 2, line 6 repeats line 3, "
        "line 8 repeats line 7, line 9 repeats line 7, line 10 repeats line 7, ...): each is written as its own "
        "sample (keys x_1, x_2, ...), as for oversampling; delete the repeated rows if they are a mistake"
    )
    assert [line for line in run.stderr.splitlines() if line.startswith("WARNING")] == [f"WARNING {note}"]
    assert note in run.stdout.splitlines() and "skipped: nothing" in run.stdout
    assert labels(photos / "out") == {
        "img/0.cls": b"1", "img/1.cls": b"2", "img/0_1.cls": b"1", "img/2.cls": b"0", "img/1_1.cls": b"3",
        "img/3.cls": b"0", **{f"img/3_{i}.cls": str(i).encode() for i in range(1, 6)},
    }  # fmt: skip
    assert manifest(photos / "out")["notes"][1] == note
    (photos / "list.jsonl").write_text('{"path": "img/0.jpg"}\n{"path": "img/1.jpg"}\n{"path": "img/0.jpg"}\n')
    run = write(photos / "list.jsonl", photos / "o2" / "s-%02d.tar")
    assert run.returncode == 0, run.stderr
    assert "list.jsonl: 1 row repeats an earlier row's image (line 3 repeats line 1): each" in run.stdout
    (photos / "once.csv").write_text("path\nimg/0.jpg\nimg/1.jpg\n")
    run = write(photos / "once.csv", photos / "o3" / "s-%02d.tar")
    assert run.returncode == 0 and "WARNING" not in run.stderr and "an earlier row" not in run.stdout


@pytest.mark.parametrize(
    ("sep", "name", "shown"), [(";", "semicolon", ";"), (",", "comma", ","), ("\t", "tab", "<tab>")]
)
def test_a_one_column_header_over_rows_with_more_columns_is_refused_naming_the_line(
    photos: Path, sep: str, name: str, shown: str
):
    """``path`` over ``img/0.jpg;3`` rows: read as one column, every row named no file (or had too many cells)."""
    listing = photos / "list.csv"
    listing.write_text(f"Path\n\nimg/0.jpg{sep}3\nimg/1.jpg{sep}4\n")
    run = write(listing, photos / "out" / "s-%02d.tar")
    assert run.returncode == 2, run.stdout
    row = "img/0.jpg" + ("\\x09" if sep == "\t" else sep) + "3"
    assert run.stderr.splitlines() == [
        f"shardpipe write: error: {listing}:1: the header names one column (Path), but the rows below it have "
        f"more: line 3 ({row}) splits at a {name} into 2 cells: name every column in the header, e.g. Path{shown}label"
    ]
    assert not (photos / "out").exists()


def test_a_one_column_list_with_a_separator_in_some_file_names_is_read_as_one_column(photos: Path):
    (photos / "img" / "a;b.jpg").write_bytes(make_jpeg(5, plain=True))
    (photos / "list.csv").write_text("path\nimg/0.jpg\nimg/a;b.jpg\n")
    run = write(photos / "list.csv", photos / "out" / "s-%02d.tar")
    assert run.returncode == 0 and "skipped: nothing" in run.stdout, run.stdout + run.stderr
    assert "read: list.csv: one column (no comma, semicolon, tab or vertical bar in its first line)" in run.stdout
    assert manifest(photos / "out")["samples"] == 2
