"""Run folders, shared by every training command: the run's settings (``config.json``), its
checkpoint (``checkpoint.pt``) and CSV logs, all written atomically and read back safely.

Writes go to a temporary file in the same folder, flushed to disk and renamed over the old one,
so a crash (or a full disk) leaves the previous file or the new one, never a torn one; a
temporary left behind by a killed process is removed when a run next opens the folder.
Checkpoints hold only tensors and plain data and are read with ``torch.load(weights_only=True)``:
opening someone else's checkpoint cannot run code.
"""
import csv
import json
import os
import pickle
import re

import torch

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
_TEMPORARY = re.compile(r"\.tmp(\d+)$")


class RunError(ValueError):
    """A run folder's file is missing, unreadable or incomplete (the message names the file)."""


def atomic_write(path, write, binary=True):
    """Call ``write(f)`` on a temporary file in the same folder, flush it to disk, then rename it
    over ``path``; on an error the temporary file is removed and ``path`` is untouched."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def read_json(path, what="settings"):
    """A JSON object from ``path``, with errors that name the file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise RunError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path}: not a readable JSON {what} file ({error})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a JSON object of {what}, got {type(data).__name__}")
    return data


class RunFolder:
    """One run's folder; ``create`` makes it if missing (a run that writes), else reading a
    folder that is not there leaves nothing behind."""

    def __init__(self, path, create=False):
        self.path = str(path)
        if create:
            os.makedirs(self.path, exist_ok=True)
        if os.path.isdir(self.path):
            self.remove_stale_temporaries()

    def file(self, name):
        return os.path.join(self.path, name)

    def remove_stale_temporaries(self):
        """Delete the temporary files of writes whose process is gone (a kill mid-save)."""
        for name in os.listdir(self.path):
            match = _TEMPORARY.search(name)
            if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
                os.remove(self.file(name))

    # ---- settings

    def write_config(self, config):
        text = json.dumps(config, indent=2)
        atomic_write(self.file(CONFIG), lambda f: f.write(text), binary=False)

    def read_config(self):
        return read_json(self.file(CONFIG))

    # ---- checkpoint

    def has_checkpoint(self):
        return os.path.isfile(self.file(CHECKPOINT))

    def save_checkpoint(self, state):
        """``state``: a dict of tensors and plain data (numbers, strings, lists, dicts)."""
        atomic_write(self.file(CHECKPOINT), lambda f: torch.save(state, f))

    def load_checkpoint(self, required=()):
        """The checkpoint's state on the CPU, read without running any code it might carry;
        ``required`` keys must be present."""
        path = self.file(CHECKPOINT)
        if not os.path.isfile(path):
            raise RunError(f"{path}: no checkpoint (is {self.path} a run folder?)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError,
                ImportError, TypeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RunError(f"{path}: not a readable checkpoint ({first})") from None
        if not isinstance(state, dict):
            raise RunError(f"{path}: not a checkpoint (a {type(state).__name__}, not a dict)")
        missing = [key for key in required if key not in state]
        if missing:
            raise RunError(f"{path}: incomplete checkpoint, missing {', '.join(map(repr, missing))}")
        return state

    # ---- logs

    def log(self, name, columns=None):
        return CsvLog(self.file(name), columns)


class CsvLog:
    """Rows appended to a CSV file; ``columns`` (or else the first row) fix a new file's columns,
    an existing file keeps its own."""

    def __init__(self, path, columns=None):
        self.path, self.fields, self.columns = path, None, columns

    def remove(self):
        if os.path.isfile(self.path):
            os.remove(self.path)

    def truncate(self, last_step):
        """Drop rows written after ``last_step`` (a resumed run restarts from its checkpoint)."""
        if not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= last_step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    def write(self, row):
        new = not os.path.isfile(self.path) or os.path.getsize(self.path) == 0
        if self.fields is None:
            if new:
                self.fields = list(self.columns or row)
            else:
                with open(self.path) as f:
                    self.fields = next(csv.reader(f))
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
