"""A cache store in a local (or network-mounted) directory."""

from __future__ import annotations

import errno
import os
import queue
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator

from ...exceptions import StoreUnavailable
from .base import ObjectInfo, Store, check_key


class LocalStore(Store):
    cheap_touch = True

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.url = self.root

    def _path(self, key: str) -> str:
        check_key(key)
        path = os.path.join(self.root, *key.split("/"))
        # defence in depth: the key check already rules this out
        if os.path.commonpath([self.root, os.path.abspath(path)]) != self.root:
            from ...exceptions import UnsafePath

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

    def get_dated(self, key: str) -> tuple[bytes, float, float | None] | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read(), os.fstat(f.fileno()).st_mtime, None
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

        def unreadable(err):
            # a folder that cannot be listed must not look empty: prune would take
            # the blobs its entries reference for garbage
            raise err

        try:
            for dirpath, dirnames, filenames in os.walk(base, onerror=unreadable):
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

    def stale_temporaries(self, older_than: float, prefix: str = "") -> list[ObjectInfo]:
        out = []
        base = self.root
        if prefix:
            check_key(prefix.rstrip("/"))
            base = os.path.join(self.root, *prefix.rstrip("/").split("/"))
        for dirpath, _dirnames, filenames in os.walk(base):
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

    def touch(self, key: str) -> bool:
        """Set the object's modification time to now (False if it does not exist)."""
        try:
            os.utime(self._path(key))
            return True
        except (FileNotFoundError, PermissionError):
            return False  # gone, or another user's file in a shared cache: best effort

    def put_file(self, key: str, path: str, link: bool = False) -> bool:
        """Store a copy of the file, or with ``link`` a hard link to it when that is
        possible (same filesystem) and safe (see ``_try_link``): the cache and the
        datastore then share one inode and the blob takes no more disk space.
        True if it was linked."""
        dest = self._path(key)
        tmp = None
        try:
            directory = os.path.dirname(dest)
            os.makedirs(directory, exist_ok=True)
            if link:
                try:
                    tmp = self._try_link(path, directory)
                except _Missing as err:
                    raise FileNotFoundError(str(err)) from None
                if tmp is not None:
                    os.replace(tmp, dest)
                    tmp = None
                    return True
            # copyfile creates the new name with the umask's mode; reopening a file
            # from mkstemp would truncate it, which ext4 (auto_da_alloc) answers with
            # a flush of the new data when it is closed
            tmp = _temp_name(directory)
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
            tmp = None
            return False
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
            tmp = _temp_name(directory)  # a new file: see put_file
            try:
                shutil.copyfile(src, tmp)
            except FileNotFoundError:
                if os.path.exists(src):
                    raise
                return False
            os.replace(tmp, path)
            tmp = None
            return True
        except OSError as err:
            raise self._fault("read", key, err)
        finally:
            if tmp is not None:
                _silent_unlink(tmp)

    def fetch_hashed(self, key: str, directory: str, hasher, link: bool = False):
        """Put the object's stored bytes in a new temporary file in ``directory``, feeding
        every byte to ``hasher`` (anything with ``update``) on the way.

        Returns ``(temporary path, linked)``, or None if the object does not exist. The
        caller checks the digest, then renames the file into place or deletes it.

        With ``link``, the file is a hard link to the cache's file when that is possible
        (same filesystem) and safe: the inode is owned by this user and writable by no one
        else, so nothing but this user can change the bytes after they are hashed. The
        hash is then taken through the new link, i.e. of exactly the inode that stays in
        place. Otherwise the bytes are copied and hashed in one pass.
        """
        src = self._path(key)
        try:
            os.makedirs(directory, exist_ok=True)
            if link:
                tmp = self._try_link(src, directory)
                if tmp is not None:
                    try:
                        _hash_file(tmp, hasher)
                    except BaseException:
                        _silent_unlink(tmp)
                        raise
                    return tmp, True
            try:
                source = open(src, "rb", buffering=0)
            except FileNotFoundError:
                return None
            with source:
                # a new file written through its own descriptor: no truncation of an
                # existing file and no rename over one, which ext4 (auto_da_alloc)
                # answers with a synchronous flush
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
                try:
                    with open(fd, "wb", buffering=0) as out:
                        os.fchmod(out.fileno(), file_mode_from_umask())
                        _copy_hashing(source, out, hasher)
                except BaseException:
                    _silent_unlink(tmp)
                    raise
            return tmp, False
        except _Missing:
            return None
        except OSError as err:
            raise self._fault("read", key, err)

    @staticmethod
    def _try_link(src: str, directory: str) -> str | None:
        """A new hard link to ``src`` in ``directory``, or None when linking is not possible
        or not safe (then the caller copies). Raises _Missing if ``src`` does not exist."""
        for _attempt in range(10):
            tmp = _temp_name(directory)
            try:
                os.link(src, tmp)
            except FileExistsError:
                continue
            except FileNotFoundError:
                if not os.path.exists(src):
                    raise _Missing(src)
                return None
            except OSError as err:
                # EXDEV (another filesystem), EPERM (protected_hardlinks, or a filesystem
                # without links), EMLINK (too many links), ...: copy instead
                if err.errno == errno.ENOENT:
                    raise _Missing(src)
                return None
            # checked on the link itself: the inode that will stay in the datastore
            st = os.lstat(tmp)
            if (
                not stat.S_ISREG(st.st_mode)
                or st.st_uid != os.geteuid()
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            ):
                _silent_unlink(tmp)
                return None
            return tmp
        return None


class _Missing(Exception):
    pass


def _temp_name(directory: str) -> str:
    """A name for a new temporary file (64 random bits: no collision in practice)."""
    return os.path.join(directory, ".tmp-" + os.urandom(8).hex())


_BUFFER = 4 << 20


_KERNEL_CHUNK = 8 << 20


def _copy_hashing(source, out, hasher) -> None:
    """Copy one open file (from its start) into another, feeding ``hasher`` the bytes
    of the copy in order.

    The kernel copies (``copy_file_range``: the bytes never pass through Python),
    chunk by chunk in a helper thread, while this thread hashes each copied chunk
    read back from the destination (from the page cache): the digest is of exactly
    the bytes written, and copying and hashing overlap. Where the kernel cannot copy
    between these two files, one pass through a reused buffer instead.
    """
    copy_range = getattr(os, "copy_file_range", None)
    size = os.fstat(source.fileno()).st_size
    if copy_range is None or size == 0:
        return _copy_hashing_buffered(source, out, hasher)
    src, dst = source.fileno(), out.fileno()
    try:
        first = copy_range(src, dst, min(_KERNEL_CHUNK, size), 0, 0)
    except OSError:
        first = 0  # not supported here (another filesystem, an old kernel)
    if first <= 0:
        return _copy_hashing_buffered(source, out, hasher)
    chunks: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def copier():
        offset = first
        try:
            while offset < size and not stop.is_set():
                n = copy_range(src, dst, min(_KERNEL_CHUNK, size - offset), offset, offset)
                if n <= 0:
                    raise OSError(errno.EIO, "the file shrank while it was copied")
                put((offset, n))
                offset += n
            put(None)
        except BaseException as err:  # handed to the hashing thread, which raises it
            put(err)

    chunks.put((0, first))
    thread = threading.Thread(target=copier, name="memoize-copy", daemon=True)
    thread.start()
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    try:
        while True:
            item = chunks.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            offset, n = item
            end = offset + n
            while offset < end:
                got = os.preadv(dst, [view[: min(_BUFFER, end - offset)]], offset)
                if got <= 0:
                    raise OSError(errno.EIO, "the copy could not be read back")
                hasher.update(view[:got])
                offset += got
    finally:
        stop.set()
        thread.join()


def _copy_hashing_buffered(source, out, hasher) -> None:
    """Copy one open file to another, hashing on the way, through one reused buffer."""
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    while True:
        n = source.readinto(buf)
        if not n:
            break
        chunk = view[:n]
        hasher.update(chunk)
        while chunk:
            written = out.write(chunk)
            chunk = chunk[written:]


def _hash_file(path: str, hasher) -> None:
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            hasher.update(view[:n])


def file_mode_from_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _silent_unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
