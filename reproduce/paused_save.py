"""Run the ``fedmoe`` command with every checkpoint write paused halfway, so a crash test can kill it mid-write.

    python reproduce/paused_save.py SECONDS run CONFIG ...      (after SECONDS: the arguments of ``fedmoe``)

``torch.save`` into a checkpoint's temporary file (``fedmoe.results.atomic_write`` writes ``.checkpoint.pt.*.tmp``
beside the checkpoint, then renames it over it) writes the first half of the bytes, fsyncs them, sleeps
``SECONDS``, then writes the rest; every other save is left alone. A temporary checkpoint that is not empty is the
moment to kill (``bench_crash.py`` polls for it). A test tool, not part of the kit.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable

from fedmoe.results import CHECKPOINT_FILE


def is_checkpoint_temporary(file) -> bool:
    """Whether ``file`` (an open file object) is a checkpoint's temporary file, by the path of its descriptor."""
    try:
        path = os.readlink(f"/proc/self/fd/{file.fileno()}")
    except (AttributeError, OSError, ValueError):  # a path, a buffer, or no /proc
        return False
    name = os.path.basename(path)
    return name.startswith(f".{CHECKPOINT_FILE}.") and name.endswith(".tmp")


def paused(save: Callable, seconds: float) -> Callable:
    """``save`` (``torch.save``) that pauses ``seconds`` halfway through a checkpoint's temporary file."""

    def paused_save(obj, f, *args, **kwargs):
        if not is_checkpoint_temporary(f):
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        time.sleep(seconds)
        f.write(data[len(data) // 2:])
        return None

    return paused_save


def main(argv: list[str]) -> int:
    """Pause checkpoint writes by ``argv[0]`` seconds, then run ``fedmoe`` with the other arguments."""
    import torch

    from fedmoe.cli import main as fedmoe

    torch.save = paused(torch.save, float(argv[0]))
    return fedmoe(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
