"""Progress on a terminal, readable lines in a log file.

On a terminal a tqdm bar redraws in place. When standard error is not a terminal (``tarflow train > train.log
2>&1``, a batch job), every redraw would be one more carriage-return fragment in the file, so the same call
gives `LogLines`: whole lines without a bar, at most one every ``every_s`` seconds (or every ``every_steps``
updates), plus one at the end.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterable, Iterator

from tqdm.auto import tqdm as terminal_tqdm
from tqdm.std import tqdm

LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%), {elapsed} elapsed, ETA {remaining}, {rate_fmt}{postfix}"
LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt}, {elapsed} elapsed, {rate_fmt}{postfix}"


class LogLines(tqdm):
    """tqdm whose every display is one whole line: no bar, no carriage return, nothing cleared or redrawn (not
    even after `write`), and no line before the first update."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, delay=1e-9, **kwargs)

    @classmethod
    @contextmanager
    def external_write_mode(cls, file=None, nolock: bool = False) -> Iterator[None]:
        yield

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing its bar: a log has nothing to clear (False: nor a carriage return to write)
            return False
        self.fp.write((self.__str__() if msg is None else msg) + "\n")
        self.fp.flush()
        return True

    def clear(self, nolock: bool = False) -> None:
        pass

    def moveto(self, n: int) -> None:
        pass

    def close(self) -> None:
        """One last line with the final count (unless it was just printed), whatever ``leave`` says."""
        if not self.disable and self.n != self.last_print_n:
            self.display()
        self.leave = False
        super().close()


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", enabled: bool = True,
                 every_s: float = 30.0, every_steps: int | None = None, **kwargs) -> tqdm:
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``); ``enabled=False`` shows nothing.

    On a terminal: the usual bar. Otherwise: `LogLines`, a line at most every ``every_s`` seconds, or exactly
    every ``every_steps`` updates when given (the trainer's log interval). ``kwargs`` go to tqdm (unit, leave,
    initial, ...).
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled or sys.stderr.isatty():
        return terminal_tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True, **kwargs)
    timing = (dict(miniters=every_steps, mininterval=0.0) if every_steps else dict(mininterval=every_s))
    return LogLines(iterable, total=total, desc=desc, file=sys.stderr, maxinterval=float("inf"),
                    bar_format=LINE_FORMAT if total is not None else LINE_FORMAT_NO_TOTAL, **timing, **kwargs)
