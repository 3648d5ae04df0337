"""Saving the experiments' figures: once under the results folder, optionally copied for the docs."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(figure, path: Path, copy: Path | str | None = None) -> None:
    """Save ``figure`` to ``path`` (100 dpi), copy it to ``copy`` when given (not ''), close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    copy_figure(path, copy)


def copy_figure(path: Path, copy: Path | str | None) -> None:
    """Copy a saved figure to ``copy`` (nothing for None or '')."""
    if copy:
        copy = Path(copy)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
