"""Storage: a local path or any ``pyarrow.fs`` URI, with atomic writes and retried I/O.

Every file caviar writes goes through :meth:`Storage.write_bytes` or
:meth:`Storage.write_table`. On a POSIX file system a write lands in a hidden temp file
beside its target's folder and is renamed into place, so a reader never sees half a file. Object
stores (S3, GCS) make a PUT visible only when it completes, so there we write directly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.errors import StorageError

T = TypeVar("T")
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # a file system that keeps no locks
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TRANSIENT_ERRORS = (OSError, TimeoutError, ConnectionError)
PERMANENT_ERRORS = (PermissionError, NotADirectoryError, IsADirectoryError)
_URI_SECRETS = re.compile(r"((?:[?&])(?:secret_key|access_key|session_token)=)[^&]*", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(://[^/:@]+:)[^/@]*@")
_REDACTED_SECRET = re.compile(r"://[^/:@]+:\*\*\*@")  # user:***@, as redact_uri prints a URI


def redact_uri(uri: str) -> str:
    """``uri`` with credentials (``secret_key=``, ``user:password@``) masked: safe to print, log or store."""
    return _URI_PASSWORD.sub(r"\1***@", _URI_SECRETS.sub(r"\1***", uri))


_SCHEME_ONE_SLASH = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")  # s3:/bucket: two letters at least (not C:/)


def _refuse_a_mistyped_uri(uri: str) -> None:
    """``s3:/bucket`` (one slash), or a query on a path without a scheme, would be taken for a local folder: a sweep
    trained and written to ``./s3:/...`` on this disk, the URI's secret in a folder name."""
    if "://" in uri:
        if _REDACTED_SECRET.search(uri):  # a printed URI pasted back: the store would be asked with the secret '***'
            raise StorageError(f"storage {uri!r}: '***' stands where the URI's secret goes, as caviar prints a URI (it "
                               "never prints credentials); put the secret back, or leave the credentials out of the "
                               "URI and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if "#" in uri:  # s3://b/a#b/p?endpoint_override=...: pyarrow drops the rest, query and all, as a fragment
            raise StorageError(f"storage {redact_uri(uri)!r}: a '#' in a URI starts a fragment and cuts off what "
                               "follows it (the rest of the path and the query); write a '#' in a name as %23")
        if uri.lower().startswith("file://") and "?" in uri:  # pyarrow drops it: the sweep would go to another folder
            raise StorageError(f"storage {redact_uri(uri)!r}: a file:// URI takes no query, so what follows '?' "
                               "would be dropped from the path; write a '?' in a name as %3F, or give a plain path")
        return
    mistyped = _SCHEME_ONE_SLASH.match(uri)
    if mistyped:
        meant = redact_uri(f"{mistyped[1]}://{uri[len(mistyped[0]):]}")  # masked: one slash hides the secret
        raise StorageError(f"storage {mistyped[1]}:/...: a URI takes two slashes after its scheme, as in {meant!r}; "
                           "a local folder is a plain path")
    if "?" in uri and "=" in uri.partition("?")[2]:
        raise StorageError(f"storage {redact_uri(uri)!r}: a query (?...=...) belongs to a URI such as "
                           "s3://bucket/prefix?endpoint_override=...; a local folder is a plain path")


def split_query(uri: str) -> tuple[str, str, str]:
    """``(base, "?", query)`` of a URI (``s3://b/p?endpoint_override=...``); a local path is all base: a ``?`` in a
    folder's name is part of the name there."""
    return uri.partition("?") if "://" in uri else (uri, "", "")


def check_name(kind: str, name: str) -> str:
    """Refuse names that could leave the storage root (``..``, ``/``) or hide files."""
    if not _NAME.match(name) or ".." in name:
        raise StorageError(f"{kind} name {name!r}: use letters, digits, '_', '-', '.' (no '/', no '..', 1-128 chars)")
    return name


def io_attempts() -> int:
    """Tries per storage operation: ``CAVIAR_IO_ATTEMPTS`` (default 4). Object-store SDKs also retry inside each."""
    value = os.environ.get("CAVIAR_IO_ATTEMPTS", "4")
    if not value.isdigit() or int(value) < 1:
        raise StorageError(f"CAVIAR_IO_ATTEMPTS={value!r}: expected a positive integer")
    return int(value)


# Below this many bytes in memory a table is written uncompressed: a trial's metrics, index or diagnostics
# file (a few KiB, mostly footer) encoded in 0.66 ms instead of 1.27 ms and came out within 40% of the size.
COMPRESS_FROM_BYTES = 16 * 1024


def parquet_bytes(table: pa.Table) -> bytes:
    """The Parquet file every table is written as: zstd (when large enough to gain), page checksums (a flipped
    bit fails the read)."""
    sink = io.BytesIO()
    compression = "zstd" if table.nbytes >= COMPRESS_FROM_BYTES else "none"
    pq.write_table(table, sink, compression=compression, write_page_checksum=True, **parquet_encoding(table))
    return sink.getvalue()


def parquet_encoding(table: pa.Table) -> dict[str, Any]:
    """Dictionaries for text columns only, statistics for flat columns only, and none for a float column holding NaN.

    A dictionary over doubles or over a predictions list repeats nothing and only costs: a trial's
    predictions file wrote in a third of the time and came out a sixth smaller without one. Statistics
    on flat columns (trial ids, epochs, times) are what readers skip row groups by; a list or map has none
    worth keeping. A float column with a NaN (a diverged epoch's losses and score) gets no min/max: the Parquet
    format leaves NaN out of them, and DuckDB, by default, takes a min/max as proof that no NaN is there
    (``isnan(score)`` came out false on the NaN row, ``where score > x`` dropped it, ``max(score)`` skipped it).
    """
    schema = table.schema
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_dictionary(f.type)]
    flat = [f.name for f in schema if not pa.types.is_nested(f.type) and not _holds_nan(table.column(f.name))]
    return {"use_dictionary": text or False, "write_statistics": flat or False}


def _holds_nan(column: pa.ChunkedArray) -> bool:
    if not pa.types.is_floating(column.type) or column.null_count == len(column):
        return False
    return bool(pc.any(pc.is_nan(column)).as_py())


def with_retries(action: Callable[[], T], *, what: str, attempts: int | None = None, base_delay: float = 0.2) -> T:
    """Run ``action``, retrying transient I/O errors with jittered exponential backoff."""
    attempts = attempts or io_attempts()
    for attempt in range(attempts):
        try:
            return action()
        except FileNotFoundError:
            raise
        except PERMANENT_ERRORS as exc:  # retrying cannot help: say so at once
            raise StorageError(f"{what}: {exc}") from None
        except TRANSIENT_ERRORS as exc:
            if attempt == attempts - 1:
                raise StorageError(f"{what}: {exc}") from None
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class Storage:
    """A directory on some file system: all paths given to its methods are relative to it."""

    def __init__(self, fs: pafs.FileSystem, root: str, uri: str):
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri
        self.atomic_rename = isinstance(fs, pafs.LocalFileSystem)

    @classmethod
    def from_uri(cls, uri: str | os.PathLike[str]) -> Storage:
        """``/data/sweeps``, ``file:///data``, ``s3://bucket/prefix?endpoint_override=...``, or a ``pathlib.Path``."""
        uri = os.fspath(uri)
        _refuse_a_mistyped_uri(uri)
        try:
            if "://" in uri:
                fs, root = pafs.FileSystem.from_uri(uri)
            else:
                fs, root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            raise StorageError(redact_uri(f"storage {uri!r}: {exc}")) from None  # pyarrow's text repeats the URI
        return cls(fs, root, uri)

    @property
    def location(self) -> str:
        """What another process uses to open this storage: the URI, or the absolute path (a worker has its own cwd)."""
        return self.uri if "://" in self.uri else self.root

    def child(self, name: str) -> Storage:
        base, sep, query = split_query(self.uri)  # s3://b/p?endpoint_override=...: the name goes before the query
        return Storage(self.fs, self.path(name), f"{base.rstrip('/')}/{name}{sep}{query}")

    def path(self, rel: str) -> str:
        if rel.startswith("/") or ".." in rel.split("/"):  # e.g. a tampered index row: never leave the root
            raise StorageError(f"{self.root}: {rel!r} points outside it (absolute or '..')")
        return posixpath.join(self.root, rel) if rel else self.root

    # -- writes ------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)

        def write() -> None:
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
            if not self.atomic_rename:
                with self.fs.open_output_stream(target) as out:
                    out.write(data)
                return
            tmp = posixpath.join(self._staging_dir(rel), temp_name(target))
            try:
                with self.fs.open_output_stream(tmp) as out:
                    out.write(data)
                self.fs.move(tmp, target)
            except BaseException:
                try:
                    self.fs.delete_file(tmp)
                except OSError:
                    pass
                raise

        with_retries(write, what=f"writing {target}")

    def _staging_dir(self, rel: str) -> str:
        """Where a write's temp file waits for its rename: beside the target's folder, not in it.

        A table folder then only ever holds whole files, even after a kill mid-write: Polars reads a folder's
        hidden files too (a half-written one failed ``pl.read_parquet("metrics/")``), as DuckDB's ``'metrics/*'``
        does. The rename stays within the file system, so it stays atomic.
        """
        folder = posixpath.dirname(self.path(rel))
        return posixpath.dirname(folder) if "/" in rel.strip("/") else folder

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` only if no file is there; False when one is (another writer got there first).

        On a local (or NFS v3+) file system the bytes go to a temp file first, then a hard link puts it in
        place only if no file is there: one step, and the file appears whole. A write that fails (a full
        disk) or is killed leaves no half-written file that would block the name for good. Where a file
        system has no hard links, ``O_CREAT | O_EXCL`` makes the check and the create one step. pyarrow's
        object-store file systems have no conditional PUT, so there it is check-then-write followed by a
        read-back: of two writers racing inside the same read-after-write window both could pass;
        :mod:`orchestrator.store.lease` narrows that with the read-back of its owner id (docs/RELIABILITY.md).
        """
        target = self.path(rel)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = posixpath.join(self._staging_dir(rel), temp_name(target))
            try:
                os.makedirs(posixpath.dirname(target), exist_ok=True)
                with open(tmp, "wb") as out:
                    out.write(data)
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    return False
                except OSError as exc:
                    if exc.errno not in _NO_HARD_LINKS:
                        raise
                    return _create_excl(target, data)
                return True
            except OSError as exc:
                raise StorageError(f"writing {target}: {exc}") from None
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        if self.exists(rel):
            return False
        self.write_bytes(rel, data)
        return True

    @contextlib.contextmanager
    def locked(self, rel: str) -> Iterator[None]:
        """Hold an exclusive lock on the file ``rel`` (created empty) while the block runs; local disks only.

        A check followed by a write (is the lease's owner gone? then write ours) is one step for every process
        that takes the same lock. The kernel drops the lock when its process dies, so a master killed inside the
        block leaves nothing to clean up. Object stores have no locks: there this does nothing and the caller's
        read-back decides (docs/RELIABILITY.md).
        """
        if not self.atomic_rename:
            yield
            return
        import fcntl  # POSIX only, like the rest of the local-disk path

        target = self.path(rel)
        try:
            os.makedirs(posixpath.dirname(target), exist_ok=True)
            fd = os.open(target, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise StorageError(f"locking {target}: {exc}") from None
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)  # POSIX record lock: also held across NFS clients (lockd / NFSv4)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise StorageError(f"locking {target}: {exc}") from None
                # A mount without locks (an NFS without lockd, a FUSE bucket): the check and write go on unlocked,
                # as on an object store.
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def remove_stale_temp_files(self, older_than_s: float) -> int:
        """Delete the temp files of writes a kill cut short (a SIGKILL skips the clean-up in :meth:`write_bytes`),
        anywhere in this folder; how many. Only those untouched for ``older_than_s``: a write still going on (a
        ``caviar ensemble`` beside a resume) keeps its file. Object stores write in place and leave none."""
        if not self.atomic_rename:
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                if not _TEMP_NAME.fullmatch(name):
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except OSError:  # renamed by its writer meanwhile, or not ours to remove: housekeeping, never a failure
                    pass
        return removed

    def write_table(self, rel: str, table: pa.Table) -> None:
        self.write_bytes(rel, parquet_bytes(table))

    # -- reads -------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        target = self.path(rel)

        def read() -> bytes:
            with self.fs.open_input_stream(target) as src:
                return src.read()

        try:
            return with_retries(read, what=f"reading {target}")
        except FileNotFoundError:
            raise StorageError(f"{target}: no such file") from None

    def read_table(self, rel: str) -> pa.Table:
        data = self.read_bytes(rel)
        try:
            return pq.read_table(io.BytesIO(data), page_checksum_verification=True)
        except Exception as exc:  # damaged bytes fail in many ways (ArrowInvalid, OSError, UnicodeDecodeError...)
            raise StorageError(f"{self.path(rel)}: not a readable Parquet file ({exc})") from None

    def list_files(self, rel_dir: str, suffix: str = ".parquet") -> list[str]:
        """Relative paths of visible files under ``rel_dir`` (hidden temp files skipped), sorted."""
        return list(self.list_versions(rel_dir, suffix))

    def list_versions(self, rel_dir: str, suffix: str = ".parquet") -> dict[str, tuple[int | None, int | None]]:
        """:meth:`list_files`, each with its (mtime in ns, size): a file rewritten in place (a compaction's target)
        shows a new version, so a reader knows what it read is stale."""
        selector = pafs.FileSelector(self.path(rel_dir), recursive=True, allow_not_found=True)
        infos = with_retries(lambda: self.fs.get_file_info(selector), what=f"listing {self.path(rel_dir)}")
        out = {}
        prefix = self.root + "/"  # by string: relpath would consult the working directory, which may be gone
        for info in infos:
            base = posixpath.basename(info.path)
            if info.type == pafs.FileType.File and base.endswith(suffix) and not base.startswith((".", "_")):
                rel = (info.path[len(prefix):] if info.path.startswith(prefix)
                       else posixpath.relpath(info.path, self.root))
                out[rel] = (info.mtime_ns, info.size)
        return dict(sorted(out.items()))

    def exists(self, rel: str) -> bool:
        info = with_retries(lambda: self.fs.get_file_info(self.path(rel)), what=f"checking {self.path(rel)}")
        return info.type != pafs.FileType.NotFound

    def delete(self, rel: str) -> None:
        target = self.path(rel)
        try:
            with_retries(lambda: self.fs.delete_file(target), what=f"deleting {target}")
        except FileNotFoundError:
            pass

    def delete_dir(self, rel: str) -> None:
        target = self.path(rel)
        try:
            with_retries(lambda: self.fs.delete_dir(target), what=f"deleting {target}")
        except FileNotFoundError:
            pass

    def check_writable(self) -> None:
        """Fail early, with the path, when the storage cannot be written."""
        probe = f".caviar-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except (StorageError, OSError) as exc:
            raise StorageError(f"storage {redact_uri(self.uri)!r} is not writable: {exc}") from None


_TEMP_NAME = re.compile(r"\..+\.tmp-[0-9a-f]{8}")  # what temp_name gives


def temp_name(target: str) -> str:
    """The hidden name a write of ``target`` lands under before its rename."""
    return f".{posixpath.basename(target)}.tmp-{uuid.uuid4().hex[:8]}"


def _create_excl(target: str, data: bytes) -> bool:
    """``O_CREAT | O_EXCL``, for a file system without hard links; a failed write removes what it created."""
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except BaseException:
        os.unlink(target)
        raise
    return True


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
