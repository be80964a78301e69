"""What a newcomer types: mistyped URLs, quoted globs, manifests, and one exit-status convention.

The exit status of every subcommand is checked by running the real ``shardpipe`` program
(``python -m shardpipe.cli``) in a subprocess: 0 success, 1 problems found in the data,
2 usage errors and missing inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import shardpipe
from shardpipe import ShardDataset, ShardWriter
from shardpipe.cli import COMMANDS, main
from shardpipe.errors import ShardNotFoundError
from shardpipe.io.urls import MistypedURLError, check_url, expand_pattern, single_manifest

from .helpers import make_samples, small_jpeg

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``shardpipe ARGS`` as a user runs it: its own process, this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def write_numbered(folder: Path, n_shards: int, per_shard: int = 2, prefix: str = "s") -> list[dict]:
    """Shards ``train-0.tar .. train-{n-1}.tar`` (unpadded: a glob must sort 9 before 10) and a manifest."""
    samples = make_samples(n_shards * per_shard, prefix=prefix)
    with ShardWriter(str(folder / "train-%d.tar"), maxcount=per_shard) as w:
        for s in samples:
            w.write(s)
    return samples


def keys(urls: str | list[str], **kw) -> list[str]:
    return [s["__key__"] for s in ShardDataset(urls, decode=None, **kw)]


# ---------------------------------------------------------------- mistyped URLs


@pytest.mark.parametrize(
    "typed, meant",
    [
        ("s3:/bucket/train-%06d.tar", "s3://bucket/train-%06d.tar"),
        ("s3:bucket/train.tar", "s3://bucket/train.tar"),
        ("GS:/bucket/a.tar", "gs://bucket/a.tar"),
        ("https:/host/a.tar", "https://host/a.tar"),
        ("file:/data/a.tar", "file:///data/a.tar"),
        ("az:/container/a.tar", "az://container/a.tar"),
        ("abfs:/container/a.tar", "abfs://container/a.tar"),
    ],
)
def test_a_mistyped_url_names_the_likely_intent(typed: str, meant: str):
    with pytest.raises(MistypedURLError, match=rf"looks like a mistyped URL: did you mean '{meant}'\?") as e:
        check_url(typed)
    assert isinstance(e.value, ValueError) and f"write './{typed}'" in str(e.value)


@pytest.mark.parametrize(
    "url", ["s3://bucket/a.tar", "file:///data/a.tar", "./s3:/bucket/a.tar", "C:/data/a.tar", "pipe:cat a.tar",
            "out/a:b.tar", "gs://b/x-{0..3}.tar"],
)  # fmt: skip
def test_real_urls_and_paths_pass(url: str):
    assert check_url(url) == url


def test_write_refuses_a_mistyped_output_url_and_writes_nothing(tmp_path: Path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        (src / f"im{i}.jpg").write_bytes(small_jpeg(i))
    r = cli("write", "imgs", "s3:/bucket/train-%06d.tar", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "shardpipe write: error: 's3:/bucket/train-%06d.tar' looks like a mistyped URL: " in r.stderr
    assert "did you mean 's3://bucket/train-%06d.tar'?" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # no folder named 's3:'
    assert r.stdout == ""


def test_every_reader_refuses_a_mistyped_url(tmp_path: Path, capsys):
    for argv in (
        ["inspect", "gs:/b/train-{0..1}.tar"],
        ["verify", "gs:/b/train-{0..1}.tar"],
        ["index", "gs:/b/train-{0..1}.tar", "-o", str(tmp_path / "m.json")],
        ["index", str(tmp_path / "x.tar"), "-o", "gs:/b/manifest.json"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"shardpipe {argv[0]}: error: 'gs:/b/" in err and "did you mean 'gs://b/" in err, err
    with pytest.raises(MistypedURLError, match="did you mean 's3://b/train-0.tar'"):
        ShardDataset("s3:/b/train-0.tar")
    with pytest.raises(MistypedURLError, match="did you mean 's3://b/m.json'"):
        ShardDataset([str(tmp_path / "a.tar"), "s3:/b/m.json"])
    with pytest.raises(MistypedURLError, match="did you mean 's3://b/manifest.json'"):
        shardpipe.IndexedDataset("s3:/b/manifest.json")
    with pytest.raises(MistypedURLError, match="did you mean 'gs://b/train-%06d.tar'"):
        ShardWriter("gs:/b/train-%06d.tar")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- globs


def test_a_quoted_glob_expands_in_natural_order_everywhere(tmp_path: Path, capsys):
    samples = write_numbered(tmp_path, 12)
    every = [s["__key__"] for s in samples]
    glob = str(tmp_path / "train-*.tar")
    assert [Path(u).name for u in expand_pattern(glob)] == [f"train-{i}.tar" for i in range(12)]  # 9 before 10
    assert keys(glob) == every == keys(str(tmp_path / "train-{0..11}.tar"))  # braces keep working
    assert keys(str(tmp_path / "train-{0,1}*.tar")) == every[:2] + every[2:4] + every[20:24]  # braces, then globs
    assert keys(str(tmp_path / "train-?.tar") + "::" + str(tmp_path / "train-1[01].tar")) == every

    assert main(["inspect", glob, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"]["shards"] == 12 and report["total"]["samples"] == 24
    assert main(["verify", glob]) == 0
    assert "verified 12 shards: 24 samples" in capsys.readouterr().out
    assert main(["index", glob, "-o", str(tmp_path / "idx" / "manifest.json"), "--no-progress"]) == 0
    indexed = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert [Path(e["name"]).name for e in indexed["shards"]] == [f"train-{i}.tar" for i in range(12)]
    assert keys(str(tmp_path / "idx" / "manifest.json")) == every


def test_a_glob_of_manifests_concatenates_them(tmp_path: Path):
    a = write_numbered(tmp_path / "a", 2, prefix="a")
    b = write_numbered(tmp_path / "b", 3, prefix="b")
    pattern = str(tmp_path / "*" / "manifest.json")
    ds = ShardDataset(pattern, decode=None)
    assert [s.samples for s in ds.shards] == [2] * 5  # counts came from the manifests
    assert keys(pattern) == [s["__key__"] for s in a + b]
    assert single_manifest(pattern) is None and single_manifest(str(tmp_path / "a" / "manifest.json"))
    assert single_manifest([str(tmp_path / "a" / "manifest.json")]) == str(tmp_path / "a" / "manifest.json")


def test_pipe_commands_and_query_strings_are_not_globs(tmp_path: Path):
    write_numbered(tmp_path, 1)
    tar = tmp_path / "train-0.tar"
    url = f"pipe:cat {tmp_path}/train-[0].tar"  # the shell expands this, not shardpipe
    assert keys(url, allow_pipe=True) == keys(str(tar))
    assert expand_pattern("https://host/a.tar?X-Amz-Signature=ab[c]") == ["https://host/a.tar?X-Amz-Signature=ab[c]"]


def test_a_glob_that_matches_nothing_is_a_clear_error(tmp_path: Path):
    write_numbered(tmp_path, 2)
    with pytest.raises(ShardNotFoundError, match=r"no file matches '.*/trian-\*\.tar'"):
        ShardDataset(str(tmp_path / "trian-*.tar"))
    r = cli("inspect", "trian-*.tar", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("shardpipe inspect: error: no file matches 'trian-*.tar'")
    assert "brace pattern, e.g. out/train-{000000..000009}.tar" in r.stderr
    with pytest.raises(ValueError, match="an HTTP server cannot list its files; name the shards with a brace"):
        ShardDataset("https://127.0.0.1:9/train-*.tar")


def test_a_glob_on_an_object_store(tmp_path: Path, s3_store, capsys):
    """S3 (SeaweedFS): a quoted glob is listed by fsspec, in natural order, for the CLI and ShardDataset."""
    samples = write_numbered(tmp_path, 11)
    for i in range(11):
        s3_store.put(f"globbed/train-{i}.tar", (tmp_path / f"train-{i}.tar").read_bytes())
    s3_store.put("globbed/other.tar", (tmp_path / "train-0.tar").read_bytes())
    options = s3_store.options()
    so = ["--storage-options", json.dumps(options)]
    glob = s3_store.url("globbed/train-*.tar")
    out = s3_store.url("globbed/manifest.json")
    r = cli("index", glob, "-o", out, *so, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "indexed 22 samples in 11 shards" in r.stdout
    assert keys(out, storage_options=options) == [s["__key__"] for s in samples]
    assert keys(glob, storage_options=options) == [s["__key__"] for s in samples]
    assert main(["verify", s3_store.url("globbed/nothing-*.tar"), *so]) == 2
    assert "no file matches 's3://shards/globbed/nothing-*.tar'" in capsys.readouterr().err
    assert main(["inspect", s3_store.url("globbed/train-{0..11}.tar"), *so]) == 2
    assert "shard not found: s3://shards/globbed/train-11.tar" in capsys.readouterr().err
    # a truncated object: index steps over members with ranged reads, yet reports where it really ends
    cut = tmp_path / "cut.tar"
    cut.write_bytes((tmp_path / "train-1.tar").read_bytes()[:1000])
    s3_store.put("cut/cut.tar", cut.read_bytes())
    assert main(["verify", str(cut)]) == 1
    local = capsys.readouterr().out
    assert main(["index", s3_store.url("cut/*.tar"), "-o", s3_store.url("cut/m.json"), "--no-progress", *so]) == 1
    remote = capsys.readouterr().err
    said = local[local.index("truncated tar: ") : local.index("at byte 1000") + len("at byte 1000")]
    assert said.replace(str(cut), s3_store.url("cut/cut.tar")) in remote, (local, remote)


# ---------------------------------------------------------------- write's listing and pattern


def test_write_lists_its_shards_as_a_pattern_the_readers_take(tmp_path: Path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(5):
        (src / f"im{i}.jpg").write_bytes(small_jpeg(i))
    r = cli("write", str(src), str(tmp_path / "out" / "train-%04d.tar"), "--maxcount", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    listing = str(tmp_path / "out" / "train-{0000..0002}.tar")
    assert f"shards: {listing}\n" in r.stdout
    assert keys(listing) == [f"im{i}" for i in range(5)]
    assert main(["write", str(src), str(tmp_path / "g" / "train-*.tar")]) == 2
    assert not (tmp_path / "g").exists()


def test_write_refuses_a_glob_as_output_pattern(tmp_path: Path, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "a.jpg").write_bytes(small_jpeg(0))
    assert main(["write", str(src), "out/train-*.tar"]) == 2
    err = capsys.readouterr().err
    assert "shard pattern 'out/train-*.tar' needs a %d or {} placeholder" in err
    assert "e.g. 'out/train-%06d.tar' (a glob names existing files; shards to write need numbers)" in err


# ---------------------------------------------------------------- exit status


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A source folder of 6 JPEGs and 3 shards written from it (with manifest and index)."""
    root = tmp_path_factory.mktemp("exit")
    (root / "src").mkdir()
    for i in range(6):
        (root / "src" / f"im{i}.jpg").write_bytes(small_jpeg(i, (96, 80)))
    argv = ["write", str(root / "src"), str(root / "good" / "d-%03d.tar"), "--maxcount", "2", "--no-progress"]
    assert main(argv) == 0
    return root


def damaged_copy(dataset: Path, tmp_path: Path, keep: int) -> Path:
    """A copy of the shards with ``d-001.tar`` cut to ``keep`` bytes."""
    bad = tmp_path / "bad"
    shutil.copytree(dataset / "good", bad)
    data = (bad / "d-001.tar").read_bytes()
    (bad / "d-001.tar").write_bytes(data[:keep])
    return bad


def test_help_of_every_subcommand_states_the_exit_status(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "exit status:\n  0  success\n  1  problems found in the data" in text, name
        assert "  2  usage error or missing input" in text, name
    r = cli("write", "--help")
    assert r.returncode == 0 and "2  usage error or missing input" in r.stdout
    assert "(write: 1 also when no image could be written, or with --strict when an input was skipped)" in r.stdout


@pytest.mark.parametrize("command", ["inspect", "verify", "index"])
def test_exit_status_missing_input_2_damaged_shard_1(command: str, dataset: Path, tmp_path: Path):
    bad = damaged_copy(dataset, tmp_path, keep=1500)
    extra = ["-o", str(tmp_path / "m.json"), "--no-progress"] if command == "index" else []
    missing = cli(command, str(dataset / "good" / "d-{000..003}.tar"), *extra)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr == f"shardpipe {command}: error: shard not found: {dataset / 'good' / 'd-003.tar'}\n"
    damaged = cli(command, str(bad / "d-*.tar"), *extra)
    assert damaged.returncode == 1, damaged.stderr
    assert f"shard {bad / 'd-001.tar'} ends inside member 'im2.jpg' (header at byte 0) at byte 1500" in (
        damaged.stdout + damaged.stderr
    )
    if command != "index":  # the manifest names its shards: a missing one is a problem in the data
        (bad / "d-001.tar").unlink()
        listed = cli(command, str(bad / "manifest.json"))
        assert listed.returncode == 1 and listed.stderr == ""
        assert f"cannot open: shard not found: {bad / 'd-001.tar'}" in listed.stdout


def test_exit_status_of_write(dataset: Path, tmp_path: Path):
    missing = cli("write", str(tmp_path / "nope"), str(tmp_path / "o" / "x-%03d.tar"), "--no-progress")
    assert missing.returncode == 2 and "shardpipe write: error: source not found" in missing.stderr
    src = tmp_path / "src"
    shutil.copytree(dataset / "src", src)
    (src / "im9.jpg").write_bytes(small_jpeg(9)[:200])  # a corrupt input
    args = [str(src), str(tmp_path / "o" / "x-%03d.tar"), "--no-progress"]
    assert main(["write", *args]) == 0  # skipped and reported
    strict = cli("write", *args, "--strict")
    assert strict.returncode == 1 and "skipped 1: " in strict.stdout


def test_exit_status_of_demo_with_a_damaged_reused_shard(tmp_path: Path):
    demo = ["demo", "--dir", str(tmp_path), "-n", "8", "--epochs", "1", "--workers", "0", "--batch-size", "4",
            "--size", "32"]  # fmt: skip
    assert main(demo) == 0
    shard = sorted((tmp_path / "shards").glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:3000])
    r = cli(*demo)
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"shardpipe demo: error: shard {shard} is 3000 bytes but its manifest entry says " in r.stderr
    assert f"(to start afresh, delete {tmp_path / 'shards'})" in r.stderr
    assert cli("demo", "-n", "many").returncode == 2  # usage


# ---------------------------------------------------------------- manifests, truncation, suggestions


def test_inspect_and_verify_take_a_manifest_and_say_when_it_is_missing(dataset: Path, capsys):
    assert main(["inspect", str(dataset / "good" / "manifest.json")]) == 0
    assert "total: 3 shards, 6 samples" in capsys.readouterr().out
    for command in ("inspect", "verify"):
        assert main([command, str(dataset / "goood" / "manifest.json")]) == 2
        err = capsys.readouterr().err
        assert err == f"shardpipe {command}: error: manifest not found: {dataset / 'goood' / 'manifest.json'}\n"


@pytest.mark.parametrize("where", ["data", "padding", "boundary"])
def test_verify_and_index_report_the_same_true_offset(where: str, tmp_path: Path, capsys):
    """A cut inside a member's data, inside its padding, or between members: one offset in both reports,
    whether the member is read (verify, index --sha256) or stepped over with a seek (index)."""
    members = [("a", 3 << 20), ("b", 700), ("c", 100)]  # a is larger than a 1 MiB read chunk
    with ShardWriter(str(tmp_path / "t-%d.tar"), maxcount=10) as w:
        for key, size in members:
            w.write({"__key__": key, "bin": os.urandom(size)})
    shard = tmp_path / "t-0.tar"
    b_header = 512 + (3 << 20)
    cut = {"data": 512 + (2 << 20) + 1234, "padding": b_header + 512 + 700 + 100, "boundary": b_header}[where]
    shard.write_bytes(shard.read_bytes()[:cut])
    expected = {
        "data": f"ends inside member 'a.bin' (header at byte 0) at byte {cut}",
        "padding": f"ends inside the padding of member 'b.bin' (header at byte {b_header}) at byte {cut}",
        "boundary": f"ends at byte {cut} without the end-of-archive marker",
    }[where]
    assert main(["verify", str(shard)]) == 1
    assert main(["index", str(shard), "-o", str(tmp_path / "m.json"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    reports = [captured.out, captured.err]
    with pytest.raises(shardpipe.TruncatedShardError) as e:
        shardpipe.index_shards(str(shard), str(tmp_path / "m2.json"), sha256=True)
    reports.append(str(e.value))
    for report in reports:
        assert f"truncated tar: shard {shard} {expected}" in report, report


def test_verify_suggests_only_what_fixes_the_shard(dataset: Path, tmp_path: Path, capsys):
    bad = damaged_copy(dataset, tmp_path, keep=1500)
    assert main(["verify", str(bad / "manifest.json")]) == 1
    out = capsys.readouterr().out
    assert "run `shardpipe index`" not in out  # reindexing a damaged shard fails on it
    assert "(to fix: restore it from a good copy, or write it again from its source; `shardpipe index` cannot" in out
    # the suggestion works: restore the shard
    shutil.copy(dataset / "good" / "d-001.tar", bad / "d-001.tar")
    assert main(["verify", str(bad / "manifest.json")]) == 0
    # a shard the manifest lists but that is gone: index the shards that remain, as suggested
    (bad / "d-001.tar").unlink()
    assert main(["verify", str(bad / "manifest.json")]) == 1
    assert "(to fix: restore it, or make a manifest of the shards that remain with `shardpipe index`)" in (
        capsys.readouterr().out
    )
    assert main(["index", str(bad / "d-*.tar"), "-o", str(bad / "manifest.json"), "--no-progress"]) == 0
    assert main(["verify", str(bad / "manifest.json")]) == 0
    assert "verified 2 shards: 4 samples" in capsys.readouterr().out


def test_serve_says_what_is_wrong_instead_of_a_traceback(dataset: Path, tmp_path: Path):
    """A missing or broken config, an unknown option, a taken port: one line on stderr, exit 2."""
    import socket

    missing = cli("serve", str(tmp_path / "nope.yaml"))
    assert (missing.returncode, missing.stderr) == (
        2,
        f"shardpipe serve: error: config not found: {tmp_path / 'nope.yaml'}\n",
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("dataset: [\n")
    r = cli("serve", str(broken))
    assert r.returncode == 2 and r.stderr.startswith(f"shardpipe serve: error: {broken} is not valid YAML: ")
    assert "Traceback" not in r.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(f"dataset:\n  urls: {dataset / 'good' / 'manifest.json'}\n  bogus: 1\n")
    r = cli("serve", str(unknown))
    assert (r.returncode, r.stderr) == (
        2,
        f"shardpipe serve: error: {unknown}, line 3: dataset: ShardDataset got an unknown keyword 'bogus'\n",
    )
    no_data = tmp_path / "no-data.yaml"
    no_data.write_text(f"dataset:\n  urls: {tmp_path / 'gone' / 'manifest.json'}\n")
    r = cli("serve", str(no_data))
    assert r.returncode == 2 and f"manifest not found: {tmp_path / 'gone' / 'manifest.json'}" in r.stderr, r.stderr

    good = tmp_path / "good.yaml"
    good.write_text(
        f"dataset:\n  urls: {dataset / 'good' / 'manifest.json'}\n  batch_size: 2\nloader:\n  num_workers: 1\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("serve", str(good), "--bind", f"tcp://127.0.0.1:{port}")
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr == f"shardpipe serve: error: cannot listen on tcp://127.0.0.1:{port}: Address already in use\n"


MANIFEST_FIX = (
    " (to fix: restore it from a good copy, or make a new one from its shards with "
    "`shardpipe index SHARDS -o MANIFEST`)"
)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"format": "shardpipe/1", "shards": [{"na', "is not a manifest: invalid JSON: "),
        ('{"format": "shardpipe/1"}', "is not a manifest: no 'shards' list"),
        ('{"shards": [{"name": "s-0.tar", "samples": -1}]}', "shard entry 0 ('s-0.tar') has samples -1"),
    ],
)
@pytest.mark.parametrize("command", ["index", "verify", "inspect", "restart"])
def test_a_damaged_manifest_is_bad_data_exit_1_and_a_missing_one_a_usage_error(tmp_path: Path, command, text, said):
    """A manifest that exists but is damaged exited 2, the status of a mistyped command line; docs/cli.md
    and every --help say 2 is for what does not exist, 1 for problems found in the data."""
    (tmp_path / "manifest.json").write_text(text)
    extra = {"index": ["-o", "manifest.json", "--no-progress"], "restart": ["-o", "out", "--no-progress"]}
    r = cli(command, "manifest.json", *extra.get(command, []), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"shardpipe {command}: error: ") and said in r.stderr
    assert r.stderr.endswith(f"{MANIFEST_FIX}\n") and "Traceback" not in r.stderr
    assert (tmp_path / "manifest.json").read_text() == text  # index did not write over it
    gone = cli(command, "gone/manifest.json", *extra.get(command, []), cwd=tmp_path)
    assert gone.returncode == 2 and "manifest not found: gone/manifest.json" in gone.stderr, gone.stderr


@pytest.mark.parametrize("command", ["index", "verify", "inspect", "restart"])
def test_a_manifest_naming_a_shard_outside_its_folder_says_how_to_fix_it_on_the_command_line(tmp_path: Path, command):
    """The error told the user to "pass manifest_paths='any'", a Python argument no command has."""
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    with ShardWriter(str(tmp_path / "other" / "s-%02d.tar"), maxcount=2) as w:
        for s in make_samples(2):
            w.write(s)
    doc = {"format": "shardpipe/1", "shards": [{"name": "../other/s-00.tar"}]}
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(doc))
    extra = {"index": ["-o", "new.json", "--no-progress"], "restart": ["-o", "out", "--no-progress"]}
    r = cli(command, "data/manifest.json", *extra.get(command, []), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr == (
        f"shardpipe {command}: error: manifest data/manifest.json: shard entry 0 names '../other/s-00.tar', "
        "which leaves the manifest's folder (to fix: in the manifest, name the file by its absolute path or URL, "
        "or by a path under the manifest's folder; or make a new manifest with "
        "`shardpipe index SHARDS -o MANIFEST`, which does so)\n"
    )
    doc["shards"][0]["name"] = str(tmp_path / "other" / "s-00.tar")  # the fix it gives
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(doc))
    fixed = cli(command, "data/manifest.json", *extra.get(command, []), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr


def test_write_takes_storage_options_for_a_remote_output(tmp_path: Path, s3_store):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        (src / f"im{i}.jpg").write_bytes(small_jpeg(i))
    options = s3_store.options()
    out = s3_store.url("written/w-%04d.tar")
    r = cli("write", str(src), out, "--maxcount", "2", "--no-progress", "--storage-options", json.dumps(options))
    assert r.returncode == 0, r.stderr
    assert f"shards: {s3_store.url('written/w-{0000..0001}.tar')}\n" in r.stdout
    assert keys(s3_store.url("written/manifest.json"), storage_options=options) == ["im0", "im1", "im2"]
    r = cli("write", str(src), out, "--storage-options", "{not json")
    assert r.returncode == 2
    assert "shardpipe write: error: --storage-options is not JSON" in r.stderr
