import errno
import json
import os
import subprocess
import sys

import pytest

from lesionseg.files import describe_os_error, disk_error, write_atomic, write_json, write_text


def test_written_files_are_complete_and_have_the_usual_permissions(tmp_path):
    path = write_json(tmp_path / "sub" / "x.json", {"a": float("nan")})
    assert json.loads(path.read_text())["a"] != json.loads(path.read_text())["a"]  # NaN round-trips
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "r.txt", "old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomic(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.txt"]


@pytest.mark.parametrize("code, reason, fix", [
    (errno.ENOSPC, "no space left on the device", "free space on that disk or write the results elsewhere"),
    (errno.EDQUOT, "disk quota exceeded", "free space within your quota or write the results elsewhere"),
    (errno.EFBIG, "file too large for the file-size limit (ulimit -f) or the file system",
     "raise the limit (ulimit -f unlimited) or write the results elsewhere"),
    (errno.EROFS, "read-only file system", "write the results elsewhere"),
    (errno.EACCES, "permission denied", "make the folder writable for this user or write the results elsewhere"),
    (errno.EPERM, "operation not permitted", "make the folder writable for this user or write the results elsewhere"),
])
def test_a_disk_error_names_the_file_the_reason_and_the_fix(code, reason, fix):
    message = str(disk_error("out/x.json", OSError(code, os.strerror(code)), earlier_kept=True))
    assert message.startswith(f"cannot write out/x.json: {reason} (the earlier file is unchanged); {fix} (output_dir=")


def test_other_os_errors_keep_their_own_words():
    assert str(disk_error("x", OSError(errno.EIO, "Input/output error"))) == "cannot write x: Input/output error"


# Writes past 4000 bytes fail in the kernel (EFBIG), as on a full disk; torch.save then raises a bare
# RuntimeError ("unexpected pos …") that does not say why.
TORCH_SAVE_PAST_THE_LIMIT = """\
import resource, signal, sys, torch
from lesionseg.errors import LesionsegError
from lesionseg.files import write_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))
try:
    write_atomic(sys.argv[1], lambda tmp: torch.save({"w": torch.zeros(10_000)}, tmp))
except LesionsegError as err:
    print(err)
"""


def test_a_checkpoint_write_past_the_file_size_limit_is_a_clear_error(tmp_path):
    path = write_text(tmp_path / "last.pt", "old")
    result = subprocess.run([sys.executable, "-c", TORCH_SAVE_PAST_THE_LIMIT, str(path)], capture_output=True,
                            text=True, timeout=300, check=True)
    assert result.stdout.startswith(f"cannot write {path}: file too large"), result.stdout + result.stderr
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_disk_error_from_elsewhere_names_the_destination_and_hedges_on_permissions():
    copy = OSError(errno.ENOSPC, "No space left on device", "runs/last.pt", None, "runs/best.pt")
    assert str(describe_os_error(copy)).startswith("cannot write runs/best.pt: no space left on the device;")
    refused = OSError(errno.EACCES, "Permission denied", "runs/x")  # may have been a read
    assert str(describe_os_error(refused)).startswith("cannot access runs/x: permission denied; fix the permissions")
