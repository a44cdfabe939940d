"""The faasx errors that are also Parsl errors (see ``faasx.errors`` for why they live apart)."""
from __future__ import annotations

from typing import Iterable, Optional

from parsl.executors.errors import InvalidResourceSpecification as _ParslInvalidResourceSpecification
from parsl.providers.errors import SubmitException as _ParslSubmitException

from faasx.errors import FaaSXError


class InvalidResourceSpecification(_ParslInvalidResourceSpecification, FaaSXError):
    """A task's resource specification names keys this executor does not understand."""

    def __init__(self, invalid_keys: Iterable[str], accepted: Iterable[str]):
        invalid = set(invalid_keys)
        message = (f"unknown resource specification key(s) {sorted(invalid)}; "
                   f"faasx accepts {sorted(accepted)}")
        super().__init__(invalid, message)

    __module__ = "faasx.errors"


class ScaleOutFailed(_ParslSubmitException, FaaSXError):
    """A scheduler refused a block (bad partition, over quota, missing command ...).

    Carries the scheduler command's own stdout and stderr, which say why.
    """

    def __init__(self, provider: str, reason: str, stdout: Optional[str] = None, stderr: Optional[str] = None,
                 retcode: Optional[int] = None, job_name: Optional[str] = None):
        self.provider = provider
        super().__init__(job_name or provider, reason, stdout, stderr, retcode)

    def __reduce__(self):
        return (type(self), (self.provider, self.message, self.stdout, self.stderr, self.retcode, self.job_name))

    def __str__(self) -> str:
        job = f" (job {self.job_name})" if self.job_name and self.job_name != self.provider else ""
        text = f"{self.provider} could not start a block{job}: {self.message}"
        if self.retcode is not None:
            text += f" (exit code {self.retcode})"
        if self.stderr:
            text += f"\nscheduler stderr:\n{self.stderr.strip()}"
        if self.stdout and self.stdout.strip():
            text += f"\nscheduler stdout:\n{self.stdout.strip()}"
        return text

    __module__ = "faasx.errors"
