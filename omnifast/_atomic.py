"""Files written so that a crash leaves the old file or the new one, never a torn one."""
import os


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
