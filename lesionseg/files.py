"""Atomic writes: a reader never sees half a file, and a failed write leaves the old file intact.

A write the disk refuses — full (ENOSPC), over quota (EDQUOT), over the file-size limit (EFBIG),
read-only (EROFS) or not ours to write (EACCES, EPERM) — becomes a `LesionsegError` naming the file, the
reason in words and the fix; the temporary file is removed and the earlier file, if any, is unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lesionseg.errors import LesionsegError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def nifti_stem(name: str) -> str | None:
    """`case_001` of `case_001.nii.gz` or `case_001.nii`; None for a name that is not NIfTI."""
    suffix = next((s for s in NIFTI_SUFFIXES if name.endswith(s)), None)
    return None if suffix is None else name[: -len(suffix)]


ELSEWHERE = "write the results elsewhere (output_dir=... for train and sweep, --out DIR for predict and evaluate)"

# errno → (the reason in words, what the user can do about it)
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on the device", f"free space on that disk or {ELSEWHERE}"),
    errno.EDQUOT: ("disk quota exceeded", f"free space within your quota or {ELSEWHERE}"),
    errno.EFBIG: ("file too large for the file-size limit (ulimit -f) or the file system",
                  f"raise the limit (ulimit -f unlimited) or {ELSEWHERE}"),
    errno.EROFS: ("read-only file system", ELSEWHERE),
    errno.EACCES: ("permission denied", f"make the folder writable for this user or {ELSEWHERE}"),
    errno.EPERM: ("operation not permitted", f"make the folder writable for this user or {ELSEWHERE}"),
}

# How much a failed write appends to its temporary file to ask the kernel whether the disk was the cause.
_PROBE_BYTES = 1 << 16


def is_disk_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_ERRORS


def disk_error(
    path: str | os.PathLike | None, err: OSError, action: str = "write", earlier_kept: bool = False
) -> LesionsegError:
    """`cannot write <path>: <reason>; <fix>` for an OSError met while writing `path`; `earlier_kept`:
    say that the file already there is unchanged (true of atomic writes only)."""
    unnamed = "an output file (the library writing it did not name it)"
    target = f"{action} {path if path is not None else unnamed}"
    if err.errno not in DISK_ERRORS:
        return LesionsegError(f"cannot {target}: {err.strerror or err}")
    reason, fix = DISK_ERRORS[err.errno]
    if action == "access":  # a read or a write: the folder may not be at fault
        fix = f"fix the permissions of {path} for this user or {ELSEWHERE}"
    kept = " (the earlier file is unchanged)" if earlier_kept else ""
    return LesionsegError(f"cannot {target}: {reason}{kept}; {fix}")


def describe_os_error(err: OSError) -> LesionsegError:
    """`disk_error` for a disk error raised outside this module (TensorBoard, a library's own file): the
    file from the error, else from the innermost frame that names one (TensorBoard's background writer
    raises errors without a file name)."""
    path = err.filename2 or err.filename  # filename2: the destination of a copy or rename
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    named = (frame.f_locals.get(name) for frame in reversed(frames) for name in ("filename", "path"))
    path = path or next((p for p in named if isinstance(p, (str, bytes, os.PathLike))), None)
    # Running out of room or a read-only disk only happens to writes; a refused permission may be a read.
    action = "access" if err.errno in (errno.EACCES, errno.EPERM) else "write"
    return disk_error(os.fsdecode(path) if path is not None else None, err, action)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _disk_cause(exc: Exception, tmp: Path) -> OSError | None:
    """The disk error behind `exc` when a library raised its own exception type for a failed write, else None.

    torch.save's C++ writer raises a RuntimeError without the errno ("unexpected pos …"); writing to a
    file object, it chains the OSError. Without one in the chain, ask the kernel: append to the temporary
    file, which fails the same way when the disk is full or the file-size limit is reached.
    """
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        if is_disk_error(cause):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    try:
        with open(tmp, "ab") as f:
            f.write(bytes(_PROBE_BYTES))
    except OSError as err:
        return err if is_disk_error(err) else None
    return None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed.

    The temporary name keeps the final suffixes (`x.nii.gz` → `.x.tmp123.nii.gz`) so that libraries that
    pick a format from the extension still do the right thing. A disk error — in the write itself, or
    hidden behind a library's own exception — is a `LesionsegError` (see `disk_error`).
    """
    path = Path(path)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as err:
        raise disk_error(path, err) from err
    os.close(fd)
    tmp_path = Path(tmp)

    def remove_tmp() -> None:
        with contextlib.suppress(OSError):  # never hide the error that brought us here
            tmp_path.unlink(missing_ok=True)

    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    except OSError as err:
        remove_tmp()
        raise disk_error(path, err, earlier_kept=path.is_file()) from err
    except Exception as exc:
        cause = _disk_cause(exc, tmp_path)
        remove_tmp()
        if cause is None:
            raise
        raise disk_error(path, cause, earlier_kept=path.is_file()) from exc
    except BaseException:
        remove_tmp()
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """JSON with NaN written as `NaN` (Python's json reads it back); keys keep their order."""
    return write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
