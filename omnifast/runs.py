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
import math
import os
import pickle
import re

import torch

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
_TEMPORARY = re.compile(r"^(?:config\.json|checkpoint\.pt)\.tmp(\d+)$")  # a run folder's own files
# The settings of every kind of run that name a file or folder the run depends on.
PATH_SETTINGS = ("dataset", "sdf_run", "flame_dir", "init")


class RunError(ValueError):
    """A run folder's file is missing, unreadable or incomplete (the message names the file)."""


def check_fields(config, integers=(), numbers=(), flags=()):
    """Check a settings dataclass's fields, raising ``ValueError("<Class>: <name> must be ...,
    got ...")`` for the first bad one: ``integers`` (name, low): integers >= low; ``numbers``
    (name, low, inclusive): finite numbers above (or at) low; ``flags``: true or false. A NaN or
    a string would otherwise pass a comparison or fail far from the setting that caused it."""
    def fail(name, expected):
        raise ValueError(f"{type(config).__name__}: {name} must be {expected}, got {getattr(config, name)!r}")

    for name, low in integers:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            fail(name, f"an integer >= {low}")
    for name, low, inclusive in numbers:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < low or (value == low and not inclusive):
            fail(name, f"a finite number {'>=' if inclusive else '>'} {low}")
    for name in flags:
        if not isinstance(getattr(config, name), bool):
            fail(name, "true or false")


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
    except (OSError, RuntimeError) as error:
        # A full disk, a lost mount, a read-only folder (torch.save reports its failed writes as
        # RuntimeError): one error that names the file and says what is left of it.
        # torch.save reports a failed write as a RuntimeError (its own message, the OSError as
        # its context); any other RuntimeError is not a write failure.
        text = str(error).lower()
        if isinstance(error, RuntimeError) and not (isinstance(error.__context__, OSError) or "writ" in text
                                                     or "inline_container" in text):
            raise
        cause = error.__context__ if isinstance(error.__context__, OSError) else error
        reason = getattr(cause, "strerror", None) or str(cause).strip().splitlines()[-1]
        kept = "the file already there is kept" if os.path.exists(path) else "nothing was written"
        raise OSError(f"{path}: could not be written ({reason}); {kept}") from error
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


RELATIVE = "relative_paths"  # beside the absolute ones in config.json and the checkpoint


def stored_paths(settings, run_dir):
    """``settings`` as a run folder records them: each PATH_SETTINGS entry absolute (resolved
    when the run is made: a shared dataset stays found when the run is copied elsewhere), and
    under ``relative_paths`` relative to the run (a project folder moved or copied as a whole
    finds its own dataset, stage I run and FLAME folder)."""
    if not isinstance(settings, dict):
        return settings
    named = {k: os.path.abspath(v) for k, v in settings.items() if k in PATH_SETTINGS and isinstance(v, str)}
    if not named:
        return settings
    run = os.path.abspath(run_dir)
    return {**settings, **named, RELATIVE: {k: os.path.relpath(v, run) for k, v in named.items()}}


def resolved_paths(settings, run_dir):
    """The recorded settings with each path absolute, from any working directory: the recorded
    absolute path where it exists (a run copied next to other data keeps its own), else the one
    relative to the run (the project folder was moved), else, for a run recorded before,
    the path as typed from the working directory; if none exists, the recorded one (to report)."""
    if not isinstance(settings, dict):
        return settings
    settings = dict(settings)
    relative = settings.pop(RELATIVE, None) or {}
    run = os.path.abspath(run_dir)
    for key in PATH_SETTINGS:
        recorded = settings.get(key)
        if not isinstance(recorded, str):
            continue
        if os.path.isabs(recorded):
            candidates = [recorded] + ([os.path.normpath(os.path.join(run, relative[key]))] if key in relative else [])
        else:
            candidates = [os.path.normpath(os.path.join(run, recorded)), os.path.abspath(recorded)]
        settings[key] = next((c for c in candidates if os.path.exists(c)), candidates[0])
    return settings


def read_settings(path):
    """A ``--config`` file of settings (a run's ``config.json`` or one of the user's): its paths
    resolved as a run folder's are, from the file's own folder."""
    return resolved_paths(read_json(path), os.path.dirname(os.path.abspath(path)))


def check_output(path, flag, extensions=None, what="file"):
    """Before any work, refuse an output the command could not write at the end: a ``path``
    whose extension is not one of ``extensions`` (what is written, e.g. ``(".png",)``), that is
    a folder, or whose folder cannot be made or written in. ``what="folder"``: ``path`` is a
    folder the command makes (a run folder)."""
    if what == "file" and os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    in_run = os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(path)), CHECKPOINT))
    if what == "file" and in_run and os.path.basename(path) in (CONFIG, CHECKPOINT):
        raise ValueError(f"{flag} {path} is a run's own file; give another name")
    if extensions and os.path.splitext(str(path))[1].lower() not in extensions:
        raise ValueError(f"{flag} must end in {' or '.join(extensions)} (the format written), got {str(path)!r}")
    path = os.path.abspath(path)
    if what == "folder" and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file; give a folder")
    nearest = path if what == "folder" else os.path.dirname(path)
    while not os.path.exists(nearest):
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        raise ValueError(f"{flag} {path}: {nearest} is a file, so no folder can be made there")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: {nearest} is not writable")


def available_memory(device="cpu"):
    """Bytes that can still be allocated on ``device`` (CUDA: free device memory; CPU:
    MemAvailable), or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needed, what, device="cpu"):
    """Refuse, before the work, something that would need more than the ``device``'s available
    memory: the error says how much it needs and how much there is."""
    free = available_memory(device)
    if free is not None and needed > free:
        raise ValueError(f"{what} would need about {needed / 2 ** 30:.1f} GiB of {torch.device(device).type} memory; "
                         f"{free / 2 ** 30:.1f} GiB is available")


def check_steps_left(run_dir, done, steps):
    """A resumed run trains from step ``done`` to ``steps``: refuse (before anything is written)
    a length it has already reached."""
    if steps < done:
        raise RunError(f"{run_dir}: the run has done {done} steps, more than --steps {steps}: a run is not "
                       f"shortened (its checkpoint is of step {done}; start a new run for a shorter one)")
    if steps == done:
        raise RunError(f"{run_dir}: nothing left to train: the run has done all of its {done} steps "
                       f"(pass --steps above {done} to train on)")


def check_new_run_folder(run_dir, kind, accepts):
    """A new run goes into a new or empty folder, or a run folder of its ``kind`` (``accepts``
    its config.json's settings without raising) that has no checkpoint yet; anything else (a
    run of another kind, a dataset, a folder of the user's) would be overwritten."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunError(f"{run_dir} is a file, not a folder: give a new or empty folder for the {kind} run")
    folder = RunFolder(run_dir)  # removes a killed write's temporary files first
    held = sorted(name for name in os.listdir(run_dir) if not _TEMPORARY.search(name)) if os.path.isdir(run_dir) else []
    if not held:
        return
    try:
        accepts(folder.read_config())
    except (RunError, OSError, ValueError, TypeError):
        raise RunError(f"{run_dir} is not empty and not a {kind} run (it holds {', '.join(held[:4])}"
                       f"{', ...' if len(held) > 4 else ''}): give a new or empty folder") from None
    if folder.has_checkpoint():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it")


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

    # The settings in config.json and the checkpoint record their files (PATH_SETTINGS) as
    # stored_paths does; read back, they are absolute (resolved_paths).
    def write_config(self, config):
        text = json.dumps(stored_paths(config, self.path), indent=2)
        atomic_write(self.file(CONFIG), lambda f: f.write(text), binary=False)

    def read_config(self):
        return resolved_paths(read_json(self.file(CONFIG)), self.path)

    # ---- checkpoint

    def has_checkpoint(self):
        return os.path.isfile(self.file(CHECKPOINT))

    def save_checkpoint(self, state):
        """``state``: a dict of tensors and plain data (numbers, strings, lists, dicts)."""
        if "config" in state:
            state = {**state, "config": stored_paths(state["config"], self.path)}
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
        if "config" in state:
            state["config"] = resolved_paths(state["config"], self.path)
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
