"""atomic_path: what it writes gets the modes a plain open() or mkdir() would give it, under the umask in force."""

import os
import stat
from pathlib import Path

import pytest

from llama_squad.files import atomic_path

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
