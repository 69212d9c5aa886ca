"""A run's files in state_dir (the OneID map and its change log, the predictive models) are written as
pending files beside the published ones and put in place together by `commit_state` once the run's export
has succeeded; a run that fails discards its own (and the next run that saves state any left by a run that
was killed), so the state stays as the last published run wrote it. (The export's own digests are written
by cdp/export.py.)"""

from __future__ import annotations

from pathlib import Path

PENDING = ".pending"


def pending(path: Path) -> Path:
    """Where this run writes `path` until commit_state puts it in place."""
    return path.with_name(path.name + PENDING)


def discard_pending(state_dir: Path | None) -> None:
    """Remove pending files left in state_dir by a run that failed (nothing without a state_dir, or before
    a run made it)."""
    if state_dir is None or not Path(state_dir).is_dir():
        return
    for stale in Path(state_dir).rglob(f"*{PENDING}"):
        stale.unlink()


def commit_state(state_dir: Path | None) -> None:
    """Put this run's pending state files in place (after its export succeeded)."""
    if state_dir is None:
        return
    for path in sorted(Path(state_dir).rglob(f"*{PENDING}")):
        path.replace(path.with_name(path.name.removesuffix(PENDING)))
