"""Files: crash-safe writes (temporary path, then rename), JSON input whose errors name the file, OS locks, hashes."""

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad input data: the message names the file, the record and what to do."""


LEGACY_DEBRIS_AGE_S = 3600  # a temporary of earlier code, which names no owner, is left alone for an hour


def _host() -> str:
    """This machine's name as a temporary's name holds it (no "/", never empty)."""
    return socket.gethostname().replace("/", "_") or "localhost"


def _debris_prefix(path: Path, kind: str) -> str:
    """The start of the name of a temporary (``kind`` "tmp") or replaced folder ("old") of ``path`` that this process
    makes: ``.NAME.KIND-HOST-PID-``; a random part follows."""
    return f".{path.name}.{kind}-{_host()}-{os.getpid()}-"


def _process_is_dead(pid: int) -> bool:
    """Whether no process ``pid`` runs on this machine (another user's is alive: signalling it is not permitted)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return False


def _newest_change(path: Path) -> float:
    """The latest modification time of ``path`` and, for a folder, of anything in it (a file being written)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    pass
    return newest


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it, and return what was removed.

    :func:`atomic_path` names its temporaries ``.NAME.tmp-HOST-PID-RANDOM`` and a folder it replaces
    ``.NAME.old-HOST-PID-RANDOM``: those of this host whose process is gone are removed; those of a live process or
    another host are left alone. Names without host and process (``.NAME.tmp-RANDOM``, ``.NAME.old-PID``: earlier
    code) are removed once nothing in them changed for an hour.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    name = re.escape(path.name)
    owned = re.compile(rf"\.{name}\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+")
    legacy = re.compile(rf"\.{name}\.(?:tmp-[a-z0-9_]{{8}}|old-\d+)")
    host = _host()
    removed = []
    for entry in path.parent.iterdir():
        if not entry.name.startswith(f".{path.name}."):
            continue
        try:
            if match := owned.fullmatch(entry.name):
                stale = match["host"] == host and _process_is_dead(int(match["pid"]))
            elif legacy.fullmatch(entry.name):
                stale = time.time() - _newest_change(entry) > LEGACY_DEBRIS_AGE_S
            else:
                continue
            if not stale:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        except OSError as e:
            logger.warning("%s: left by an interrupted write, and cannot be removed (%s)", entry, e)
            continue
        logger.info("removed %s, left by an interrupted write of %s", entry, path)
        removed.append(entry)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    Readers never see a half-written file or folder: ``path`` either keeps its old content or gets the complete
    new one. A folder that exists is replaced only with ``overwrite``. A symbolic link is followed: what it points to
    is replaced, the link stays.

    The temporary is named after its owner (``.NAME.tmp-HOST-PID-RANDOM``): what a killed process left is removed by
    the next write of the same path (:func:`remove_stale_temporaries`).

    The result has the mode a plain ``open()`` or ``mkdir()`` creates (0o666 or 0o777 less the umask: 0o644 or 0o755
    under umask 022), not the private one of the temporary path, which the caller may still change. A replaced file's
    mode is not kept: this writes a new file, as ``mv`` does, and files made private by earlier writes get it back.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # the link's target (its parent too): the temporary is made beside it
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: pass --overwrite to replace it, or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    try:  # the umask has no getter: Linux shows it in /proc, elsewhere set a private one and put it back at once
        umask = int(Path("/proc/self/status").read_text().split("Umask:", 1)[1].split()[0], 8)
    except (OSError, IndexError, ValueError):
        umask = os.umask(0o077)
        os.umask(umask)
    try:
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=_debris_prefix(path, "tmp"), dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=_debris_prefix(path, "tmp"), dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:  # a read-only or full disk: name what was to be written, not the temporary
        e.filename = str(path)
        raise
    try:
        tmp.chmod((0o777 if is_dir else 0o666) & ~umask)  # mkdtemp and mkstemp make them 0o700 and 0o600
        yield tmp
        if is_dir and path.exists():
            old = Path(tempfile.mkdtemp(prefix=_debris_prefix(path, "old"), dir=path.parent))
            os.replace(path, old)  # onto the empty folder just made: a name no one else holds
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a full disk says where (what was being written)
            e.filename = str(path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _cannot_open(path: Path, error: OSError) -> InputError:
    """The error of an input file that cannot be opened: missing, a folder, or not readable."""
    if isinstance(error, FileNotFoundError):
        return InputError(f"{path}: no such file; check the path")
    if isinstance(error, IsADirectoryError):
        return InputError(f"{path}: is a folder, not a file; pass the file inside it")
    if isinstance(error, PermissionError):
        return InputError(f"{path}: permission denied; make the file readable (chmod a+r) or pass a readable copy")
    return InputError(f"{path}: cannot be read ({error.strerror or error}); check the file")


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file; a missing, unreadable or malformed file raises :class:`InputError` naming it (and the
    position of a JSON error)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            "the file is malformed or truncated: download or write it again"
        ) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e}); convert it to UTF-8") from None
    except OSError as e:
        raise _cannot_open(path, e) from None


def read_yaml(path: str | os.PathLike, fix: str) -> Any:
    """Load a YAML file (safely: no Python tags) that a script of ours wrote; one that does not parse raises
    :class:`InputError` naming it, the line, and ``fix``."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}: not valid YAML{at}; {fix}") from None
    except OSError as e:
        raise _cannot_open(path, e) from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSON Lines file; a missing, unreadable or
    malformed file raises :class:`InputError` naming it (and the line)."""
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")  # closed by the with below; open errors are reported apart
    except OSError as e:
        raise _cannot_open(path, e) from None
    with f:
        number = 0
        try:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(
                        f"{path}: line {number} is not valid JSON ({e.msg}, column {e.colno}); "
                        "each line must hold one JSON object: fix or remove that line"
                    ) from None
                if not isinstance(record, dict):
                    raise InputError(
                        f"{path}: line {number} holds a {type(record).__name__}, not a JSON object; "
                        "each line must hold one question: fix or remove that line"
                    )
                yield number, record
        except UnicodeDecodeError as e:
            after = f" after line {number}" if number else ""
            raise InputError(f"{path}: not UTF-8 text{after} ({e}); convert it to UTF-8") from None


LOCK_NAME = ".llama_squad.lock"


@contextmanager
def file_lock(
    path: str | os.PathLike, timeout: float, busy: str, error: type[InputError] = InputError
) -> Iterator[Path]:
    """Hold the OS file lock ``path`` (``filelock``), waiting up to ``timeout`` seconds (0: not at all); raise
    ``error`` (an :class:`InputError`) with the ``busy`` message when another process holds it that long. The kernel
    drops the lock when its holder dies, so a crash never leaves it held."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise error(busy) from None
    try:
        yield path
    finally:
        lock.release()


@contextmanager
def output_lock(folder: str | os.PathLike, option: str = "--output_dir") -> Iterator[Path]:
    """Hold an exclusive lock on an output folder (``folder/.llama_squad.lock``) for the duration of a run; a second
    run on it fails at once. The folder is created if needed, and removed again (with the lock file and the parents
    made for it) if the run ends having written nothing else into it: a run that stops on an error leaves no folder.
    """
    folder = Path(folder)
    busy = (
        f"{option} {folder}: another run is writing to this folder right now (it holds {folder / LOCK_NAME}); "
        f"wait for it to finish, or pass another {option}"
    )
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # the folder first, then its new parents
    with file_lock(folder / LOCK_NAME, timeout=0, busy=busy) as lock:
        try:
            yield lock
        finally:
            if made:
                _remove_unused(made, lock)


def _remove_unused(made: list[Path], lock: Path) -> None:
    """Remove the lock file and the folders ``made`` for it (deepest first) while they hold nothing else. Called with
    the lock held: a run that starts meanwhile makes a new lock file, and its folder is then left alone."""
    try:
        if [p.name for p in made[0].iterdir()] != [lock.name]:
            return
        lock.unlink()
        for folder in made:
            folder.rmdir()  # only an empty folder: never what another run has just written
    except OSError:
        return


def fingerprint_files(paths: list[str | os.PathLike], sample_bytes: int | None = None) -> str:
    """A content hash of ``paths`` (names, sizes and bytes) that survives copying and renaming the files.

    With ``sample_bytes`` only that many bytes of each file are read (its head, then evenly spaced blocks to its
    end): cheap for multi-gigabyte weights, and still different for any retrained model, whose every block changes.
    """
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(p) for p in paths):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            if sample_bytes is None or size <= sample_bytes:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                continue
            block = 1 << 16
            count = max(1, sample_bytes // block)
            for k in range(count):
                f.seek((size - block) * k // max(1, count - 1))
                digest.update(f.read(block))
    return digest.hexdigest()
