"""A cache store in a local (or network-mounted) directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

from ..exceptions import StoreUnavailable
from .base import ObjectInfo, Store, check_key


class LocalStore(Store):
    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.url = self.root

    def _path(self, key: str) -> str:
        check_key(key)
        path = os.path.join(self.root, *key.split("/"))
        # defence in depth: the key check already rules this out
        if os.path.commonpath([self.root, os.path.abspath(path)]) != self.root:
            from ..exceptions import UnsafePath

            raise UnsafePath("refusing to access %r outside %s" % (key, self.root))
        return path

    def url_for(self, key: str) -> str:
        return self._path(key)

    @staticmethod
    def _fault(action, key, err):
        return StoreUnavailable("local cache %s failed for %s: %s" % (action, key, err))

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise self._fault("read", key, err)

    def _temp_for(self, path: str):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        # mkstemp creates 0600 files; a cache shared by a group needs the umask's mode
        os.fchmod(fd, file_mode_from_umask())
        return fd, tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = None
        try:
            fd, tmp = self._temp_for(path)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            tmp = None
        except OSError as err:
            raise self._fault("write", key, err)
        finally:
            if tmp is not None:
                _silent_unlink(tmp)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = None
        try:
            fd, tmp = self._temp_for(path)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # link() fails if the target exists: an atomic first-writer-wins
            # publish of a complete file (rename would silently overwrite).
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
        except OSError as err:
            raise self._fault("write", key, err)
        finally:
            if tmp is not None:
                _silent_unlink(tmp)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        except OSError as err:
            raise self._fault("stat", key, err)
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root
        if prefix:
            check_key(prefix.rstrip("/"))
            base = os.path.join(self.root, *prefix.rstrip("/").split("/"))
        if not os.path.isdir(base):
            return
        try:
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.startswith(".tmp-"):
                        continue
                    full = os.path.join(dirpath, name)
                    try:
                        st = os.stat(full)
                    except FileNotFoundError:
                        continue
                    rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                    yield ObjectInfo(rel, st.st_size, st.st_mtime)
        except OSError as err:
            raise self._fault("list", prefix, err)

    def stale_temporaries(self, older_than: float) -> list[ObjectInfo]:
        out = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith(".tmp-"):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                if st.st_mtime < older_than:
                    rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                    out.append(ObjectInfo(rel, st.st_size, st.st_mtime))
        return sorted(out)

    def delete(self, keys: Iterable[str]) -> int:
        count = 0
        for key in keys:
            count += 1
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                pass
            except OSError as err:
                raise self._fault("delete", key, err)
        return count

    def put_file(self, key: str, path: str) -> None:
        dest = self._path(key)
        tmp = None
        try:
            fd, tmp = self._temp_for(dest)
            os.close(fd)
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
            tmp = None
        except OSError as err:
            raise self._fault("write", key, err)
        finally:
            if tmp is not None:
                _silent_unlink(tmp)

    def get_file(self, key: str, path: str) -> bool:
        src = self._path(key)
        directory = os.path.dirname(os.path.abspath(path))
        tmp = None
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
            os.fchmod(fd, file_mode_from_umask())
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
            except FileNotFoundError:
                return False
            os.replace(tmp, path)
            tmp = None
            return True
        except OSError as err:
            raise self._fault("read", key, err)
        finally:
            if tmp is not None:
                _silent_unlink(tmp)


def file_mode_from_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _silent_unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
