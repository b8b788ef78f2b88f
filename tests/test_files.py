import json
import os

import pytest

from lesionseg.errors import LesionsegError
from lesionseg.files import write_atomic, write_json, write_text


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


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(LesionsegError, match="cannot write"):
        write_text(folder / "x.txt", "x")
