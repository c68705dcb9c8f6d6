"""The journal of an edge client run: each answered image is appended as one JSON line the
moment its answer arrives, so a run stopped by anything (the server gone longer than the retry
budget, a kill, a power cut) keeps what it got, and a rerun with ``resume`` sends only the rest.

Line 1 is a header naming what identifies the run (digests of the model files, the source's
images, ...): resuming a journal of another run is refused, since answers of two models merged
would be results of neither. Every other line is one image's record, keyed by ``img_id``; an
image is kept once (a repeated line is ignored), a line cut short by a crash is dropped (and cut
off the file before anything is appended), and a ``{"done": N}`` line marks a finished run.
Lines are flushed at once (they survive a killed process) and fsync'd at most every ``fsync_s``
seconds and on close (they survive a power cut up to then).

No torch, mmdet or mmcv: the light edge client uses it as is.
"""
import hashlib
import json
import os
import os.path as osp
import threading
import time
from typing import Dict, List, Optional

__all__ = ['FORMAT', 'Journal', 'JournalError', 'file_digest']

FORMAT = 'ecc-edge-client-journal/1'


class JournalError(ValueError):
    """A journal that cannot be resumed or replaced: another run's, or not a journal."""


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of a file's bytes (what identifies a model file, whatever its name)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return f'sha256:{h.hexdigest()}'


class Journal:
    """Answered images of one run (see the module docstring).

    Args:
        path: the JSON-lines file (None: kept in memory only, for a run that writes nothing).
        identity: what a resumed journal must match, as {key: str} (e.g. ``checkpoint`` ->
            its :func:`file_digest`); ``names`` is stored beside it for messages only.
        resume: keep the answers of an existing journal of this run (``answered``); otherwise
            an existing journal is replaced when :meth:`open` is called.

    Reading happens at construction and writing only from :meth:`open` on, so a run that fails
    before (a bad checkpoint, say) leaves an existing journal untouched. :meth:`add` is
    thread-safe (answers arrive on sender threads).
    """

    def __init__(self, path: str, identity: Dict[str, str], resume: bool,
                 names: Optional[Dict[str, str]] = None, fsync_s: float = 1.0):
        self.path, self.identity, self.resume = path, dict(identity), resume
        self.names, self.fsync_s = dict(names or {}), fsync_s
        self.answered: Dict[int, dict] = {}  # img_id -> record
        self.resumed = 0  # images answered in the journal this run resumes
        self.replaced = None  # (answered, done) of an unfinished journal this run replaces
        self._intact = None  # bytes of the existing file up to its last whole line
        self._f, self._lock, self._synced = None, threading.Lock(), 0.0
        if path is not None and osp.exists(path):
            self._read()

    # ---------------------------------------------------------------------------- reading
    def _read(self) -> None:
        with open(self.path, 'rb') as f:
            data = f.read()
        whole = data[:data.rfind(b'\n') + 1]  # a last line without newline was cut short
        lines = whole.splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get('format') != FORMAT:
            raise JournalError(f'{self.path} exists and is not an edge client journal: '
                               'refusing to resume or overwrite it (pass another --journal)')
        records, done = self._records(lines[1:])
        if not self.resume:
            if records and not done:
                self.replaced = len(records)
            return
        self._check(header)
        self.answered, self._intact = records, len(whole)
        self.resumed = len(records)

    @staticmethod
    def _records(lines) -> tuple:
        """({img_id: record} of the first line of each image, whether a run finished)."""
        records, done = {}, False
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:  # a torn line in the middle (a crash on an old filesystem)
                continue
            if isinstance(rec, dict) and 'done' in rec:
                done = True
            elif isinstance(rec, dict) and isinstance(rec.get('img_id'), int):
                records.setdefault(rec['img_id'], rec)
        return records, done

    def _check(self, header: dict) -> None:
        """JournalError naming the first thing that differs from this run."""
        old, old_names = header.get('run') or {}, header.get('names') or {}
        for key in sorted(set(old) | set(self.identity)):
            if old.get(key) != self.identity.get(key):
                raise JournalError(
                    f'{self.path} was written for another run: its {key} is '
                    f'{_show(old.get(key), old_names.get(key))}, this run\'s is '
                    f'{_show(self.identity.get(key), self.names.get(key))}. Resume with the '
                    'same files and source, or start afresh (another --journal, or without '
                    '--resume)')

    # ---------------------------------------------------------------------------- writing
    def open(self) -> 'Journal':
        """Start writing: append to the resumed journal (cut after its last whole line) or
        write a new one with the header."""
        if self.path is None:
            return self
        d = osp.dirname(osp.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        if self._intact is not None:
            self._f = open(self.path, 'r+b')
            self._f.truncate(self._intact)
            self._f.seek(self._intact)
        else:
            self._f = open(self.path, 'wb')
            self._write(dict(format=FORMAT, run=self.identity, names=self.names,
                             started=time.strftime('%Y-%m-%dT%H:%M:%S%z')))
            self._sync()
            _sync_dir(d)  # the new file's name too
        return self

    def add(self, record: dict) -> bool:
        """Append one answered image; False (nothing written) when its ``img_id`` already
        is (one image, one line, whatever answered it twice)."""
        with self._lock:
            if record['img_id'] in self.answered:
                return False
            self.answered[record['img_id']] = record
            if self._f is not None:
                self._write(record)
                if time.monotonic() - self._synced >= self.fsync_s:
                    self._sync()
        return True

    def records(self) -> List[dict]:
        """Every answered image, in source order (``pos``)."""
        with self._lock:
            return sorted(self.answered.values(), key=lambda r: (r.get('pos', 0), r['img_id']))

    def close(self, done: bool = False) -> None:
        """Flush and fsync; ``done``: the run finished (a ``{"done": N}`` line first)."""
        with self._lock:
            if self._f is None:
                return
            if done:
                self._write(dict(done=len(self.answered)))
            self._sync()
            self._f.close()
            self._f = None

    def _write(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, separators=(',', ':')).encode() + b'\n')
        self._f.flush()  # in the OS now: survives this process being killed

    def _sync(self) -> None:
        os.fsync(self._f.fileno())
        self._synced = time.monotonic()


def _show(value: Optional[str], name: Optional[str]) -> str:
    if value is None:
        return 'not recorded'
    short = value[:19] + '...' if value.startswith('sha256:') else value
    return f'{name} ({short})' if name else short


def _sync_dir(path: str) -> None:
    """fsync a folder (a new file's entry); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
