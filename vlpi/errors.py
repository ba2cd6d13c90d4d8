"""Exceptions shared by every layer of vlpi."""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from typing import Any


class GuestMemoryFault(OSError):
    """A guest-memory access hit no memslot, or a write hit a read-only one (KVM: ``-EFAULT``).

    Attributes
    ----------
    errno : int
        Always ``errno.EFAULT``.
    gpa : int
        Guest physical address of the faulting 1-byte access (or the first bad byte of a range).
    intid : int or None
        The LPI being processed when the fault happened (engine calls), else None.
    vcpu : int or None
        Its target vCPU (save/restore) or the scanned vCPU (EnableLPIs scan).
    write : bool
        True for a faulting write, False for a faulting read.
    report : SaveReport, SyncReport or None
        What was done up to the fault. With ``atomic=True`` nothing was written and the
        report's write counts are 0; with ``atomic=False`` it is the kernel's partial result.
    detail : str
        What was going on, as appended to the message (e.g. "atomic save: nothing was written").
    job : int or None
        :func:`~vlpi.save_pending_tables_many` only: the index of the faulting VM in ``jobs``;
        None for other calls.
    reports : list of SaveReport
        :func:`~vlpi.save_pending_tables_many` only: the reports of the VMs saved before the
        faulting one (empty with ``atomic=True``, since nothing was saved); empty for other calls.

    A fault pickles whole (message and every attribute above), so it can cross a process boundary.
    """

    def __init__(
        self,
        gpa: int,
        *,
        write: bool = False,
        intid: int | None = None,
        vcpu: int | None = None,
        report: Any = None,
        detail: str = "",
    ) -> None:
        what = "write to" if write else "read from"
        msg = f"guest memory fault: 1-byte {what} GPA {gpa:#x}"
        if intid is not None:
            msg += f" for INTID {intid}"
        if vcpu is not None:
            msg += f" (vCPU {vcpu})"
        if detail:
            msg += f": {detail}"
        super().__init__(_errno.EFAULT, msg)
        self.gpa = int(gpa)
        self.write = bool(write)
        self.intid = None if intid is None else int(intid)
        self.vcpu = None if vcpu is None else int(vcpu)
        self.report = report
        self.detail = detail
        self.job: int | None = None  # set by save_pending_tables_many
        self.reports: list[Any] = []  # set by save_pending_tables_many

    # keep picklable despite keyword-only construction (a fault crosses process boundaries whole:
    # message, partial report, and for save_pending_tables_many the job index and earlier reports)
    def __reduce__(self) -> tuple[Callable[..., GuestMemoryFault], tuple[Any, ...]]:
        return (
            _rebuild_fault,
            (self.gpa, self.write, self.intid, self.vcpu, self.report, self.detail, self.job, self.reports),
        )


def _rebuild_fault(
    gpa: int,
    write: bool,
    intid: int | None,
    vcpu: int | None,
    report: Any,
    detail: str = "",
    job: int | None = None,
    reports: list[Any] | None = None,
) -> GuestMemoryFault:
    e = GuestMemoryFault(gpa, write=write, intid=intid, vcpu=vcpu, report=report, detail=detail)
    e.job = job
    e.reports = list(reports or [])
    return e
