"""atomic_path: what it writes gets the modes a plain open() or mkdir() would give it, under the umask in force; what
a killed writer left is removed by the next write; a symbolic link is written through."""

import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llama_squad.files import atomic_path, atomic_write_text, remove_stale_temporaries

# umask -> (file mode, folder mode), as open() and mkdir() create them.
MODES = {0o022: (0o644, 0o755), 0o027: (0o640, 0o750)}


@pytest.fixture(params=list(MODES), ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_file_gets_the_mode_open_gives(tmp_path, umask):
    file_mode, _ = MODES[umask]
    with atomic_path(tmp_path / "metrics.json") as tmp:
        tmp.write_text("{}\n")
    assert mode(tmp_path / "metrics.json") == file_mode
    (tmp_path / "plain.json").write_text("{}\n")
    assert mode(tmp_path / "plain.json") == file_mode


def test_a_replaced_file_gets_it_too(tmp_path, umask):
    """Not the old file's mode: a file left private (0o600, as atomic_path wrote them before) gets the umask's."""
    path = tmp_path / "metrics.json"
    path.write_text("old\n")
    path.chmod(0o600)
    with atomic_path(path) as tmp:
        tmp.write_text("new\n")
    assert (path.read_text(), mode(path)) == ("new\n", MODES[umask][0])


def test_a_folder_gets_the_mode_mkdir_gives(tmp_path, umask):
    file_mode, folder_mode = MODES[umask]
    for _ in range(2):  # created, then replaced
        with atomic_path(tmp_path / "model", is_dir=True) as tmp:
            (tmp / "config.json").write_text("{}\n")
        assert (mode(tmp_path / "model"), mode(tmp_path / "model" / "config.json")) == (folder_mode, file_mode)
    (tmp_path / "plain").mkdir()
    assert mode(tmp_path / "plain") == folder_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "plain"]


def test_without_proc_the_umask_is_read_and_left_as_it_was(tmp_path, umask, monkeypatch):
    def no_proc(self, *args, **kwargs):
        raise FileNotFoundError(self)

    monkeypatch.setattr(Path, "read_text", no_proc)  # no /proc/self/status (macOS)
    with atomic_path(tmp_path / "metrics.json") as tmp:
        tmp.write_text("{}\n")
    with atomic_path(tmp_path / "model", is_dir=True):
        pass
    assert (mode(tmp_path / "metrics.json"), mode(tmp_path / "model")) == MODES[umask]
    assert os.umask(umask) == umask


# ------------------------------------------------------------------------------------- what a killed writer leaves

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
KILLED_WRITER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from pathlib import Path
    from llama_squad.files import atomic_path

    path, where = Path(sys.argv[1]), sys.argv[2]
    if where == "replacing":  # killed once the old folder is moved aside, before it is removed
        shutil.rmtree = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    with atomic_path(path, is_dir=where != "file") as tmp:
        if where == "file":
            tmp.write_text("half a fi")
        else:
            (tmp / "model.safetensors").write_bytes(b"weights")
        if where != "replacing":
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def killed_writer(path: Path, where: str) -> int:
    """Run a process that SIGKILLs itself inside ``atomic_path(path)``; its pid."""
    process = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), where], env=ENV, capture_output=True)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    return int(re.search(r"-(\d+)-\w+$", next(debris(path)).name)[1])


def debris(path: Path):
    return (p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.mark.parametrize("where", ["file", "folder", "replacing"])
def test_the_next_write_removes_what_a_killed_writer_left(tmp_path, caplog, where):
    path = tmp_path / ("metrics.json" if where == "file" else "merged")
    if where == "replacing":
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"old weights")
    pid = killed_writer(path, where)
    (left,) = debris(path)
    kind = "old" if where == "replacing" else "tmp"
    assert re.fullmatch(rf"\.{path.name}\.{kind}-{re.escape(socket.gethostname())}-{pid}-[a-z0-9_]{{8}}", left.name)
    caplog.set_level(logging.INFO)
    with atomic_path(path, is_dir=where != "file") as tmp:
        if where == "file":
            tmp.write_text("{}\n")
        else:
            (tmp / "model.safetensors").write_bytes(b"new weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert f"removed {left}, left by an interrupted write of {path}" in caplog.text


def test_temporaries_of_live_processes_and_other_hosts_are_left_alone(tmp_path, caplog):
    path = tmp_path / "results.csv"
    dead = killed_writer(path, "file")
    (dead_tmp,) = debris(path)
    live = tmp_path / f".results.csv.tmp-{socket.gethostname()}-{os.getpid()}-abcd1234"  # this process: alive
    other_host = tmp_path / f".results.csv.tmp-elsewhere.example-{dead}-abcd1234"
    old_legacy, new_legacy = tmp_path / ".results.csv.tmp-k2j_x9aa", tmp_path / ".results.csv.tmp-p0q1r2s3"
    old_legacy_folder = tmp_path / ".results.csv.old-4242"
    other_path = tmp_path / f".results.csv2.tmp-{socket.gethostname()}-{dead}-abcd1234"  # another file's
    for file in (live, other_host, old_legacy, new_legacy, other_path):
        file.write_text("x")
    old_legacy_folder.mkdir()
    (old_legacy_folder / "weights").write_text("x")
    two_hours_ago = time.time() - 7200
    for item in (old_legacy, old_legacy_folder, old_legacy_folder / "weights"):
        os.utime(item, (two_hours_ago, two_hours_ago))
    caplog.set_level(logging.INFO)
    assert sorted(remove_stale_temporaries(path)) == sorted([dead_tmp, old_legacy, old_legacy_folder])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, other_host, new_legacy, other_path)
    )
    assert caplog.text.count("left by an interrupted write of") == 3


def test_a_legacy_folder_still_being_written_is_left_alone(tmp_path):
    folder = tmp_path / ".merged.tmp-abcdefgh"  # its name is old, a file in it changes now
    folder.mkdir()
    (folder / "model.safetensors").write_text("x")
    os.utime(folder, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temporaries(tmp_path / "merged") == [] and folder.is_dir()


# ------------------------------------------------------------------------------------- symbolic links


def test_a_linked_folder_is_replaced_where_it_lies_and_the_link_kept(tmp_path):
    target = tmp_path / "datasets" / "squad_v1"
    target.mkdir(parents=True)
    (target / "old.arrow").write_text("old")
    link = tmp_path / "current"
    link.symlink_to(target)
    with atomic_path(link, is_dir=True) as tmp:
        (tmp / "new.arrow").write_text("new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert [p.name for p in target.iterdir()] == ["new.arrow"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "datasets"]
    assert [p.name for p in target.parent.iterdir()] == ["squad_v1"]


def test_a_linked_file_is_written_through_the_link(tmp_path):
    target = tmp_path / "real" / "metrics.json"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "metrics.json"
    link.symlink_to(target)
    atomic_write_text(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "real"]
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_create_dataset_overwrites_a_linked_output_dir_and_keeps_the_link(tmp_path):
    from conftest import write_squad

    import create_dataset

    source = write_squad(tmp_path / "squad.json")
    argv = ["--task", "squad_v2", "--train_file", str(source), "--test_articles", "4:6", "--output_dir"]
    target = tmp_path / "data" / "squad_v2"
    assert create_dataset.main([*argv, str(target)]) == 0
    (target / "stale.txt").write_text("from before")
    link = tmp_path / "latest"
    link.symlink_to(target, target_is_directory=True)
    assert create_dataset.main([*argv, str(link), "--overwrite"]) == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "dataset_dict.json").is_file() and not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "latest", "squad.json"]
    assert [p.name for p in target.parent.iterdir()] == ["squad_v2"]
