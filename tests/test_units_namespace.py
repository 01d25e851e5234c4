"""The namespace collector's wrappers (key/namespace.py) under a recording:
they record, and hand the body back exactly what the wrapped call returns."""

import glob
import os
import pathlib

from metaflow_extensions.memoize.plugins.memoize.key import deps, observe  # noqa: F401


def _recorded(fn):
    observer = observe.Observer()
    observer.start()
    try:
        result = fn()
    finally:
        recording = observer.stop()
    return result, recording


def test_globs_return_what_they_return_unrecorded_and_record_the_pattern(tmp_path):
    for name in ("a.csv", "b.csv", "notes.md"):
        (tmp_path / name).write_text(name)
    root = pathlib.Path(tmp_path)
    pattern = str(tmp_path / "*.csv")

    listed, recording = _recorded(lambda: glob.glob(pattern))
    assert isinstance(listed, list) and sorted(listed) == sorted(glob.glob(pattern))
    lazy, _ = _recorded(lambda: glob.iglob(pattern))
    assert next(lazy) in listed  # an iterator, as unrecorded
    first, _ = _recorded(lambda: next(root.glob("*.csv")))
    assert first.name in ("a.csv", "b.csv")
    deep, recorded_path = _recorded(lambda: sorted(p.name for p in root.rglob("*.md")))
    assert deep == ["notes.md"]

    assert ("", pattern, False, "glob") in recording.globs
    assert (str(tmp_path), "*.md", True, "pathlib") in recorded_path.globs
    # the folders a glob lists are its pattern's business, not listings
    assert str(tmp_path) not in recording.dirs_listed | recorded_path.dirs_listed


def test_an_existence_check_records_its_answer_and_a_metadata_read_its_stat(tmp_path):
    present = tmp_path / "present.txt"
    present.write_text("x")
    absent = tmp_path / "absent.txt"

    def body():
        return os.path.exists(present), os.path.exists(absent), os.path.getsize(present)

    answers, recording = _recorded(body)
    assert answers == (True, False, 1)
    assert recording.probes == {str(present): True, str(absent): False}
    assert recording.stats == {str(present): (1, present.stat().st_mtime_ns)}
