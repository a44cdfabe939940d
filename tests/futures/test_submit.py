"""submit() is atomic (issue 10, section 2): it raises and leaves nothing behind, or returns a future
that resolves.  Real processes."""
import pytest

import faasx
from faasx.errors import SerializationError

from .conftest import FAST_HEARTBEATS


def add(a, b):
    return a + b


@pytest.mark.timeout(90)    # before the fix, shutdown(wait=True) waited for the orphan future for ever
def test_a_spec_that_cannot_be_encoded_fails_at_submit_and_leaves_nothing(run_dir):
    ex = faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS)
    try:
        with pytest.raises(SerializationError, match="priority"):
            ex.submit_batch([(add, (1, 2), {}, {"priority": 2 ** 64})])
        assert ex.executor.outstanding() == 0
        # the engine is healthy: the I/O thread did not die on it
        assert [f.result(timeout=30) for f in ex.submit_batch([(add, (i, 1)) for i in range(50)])] == \
            [i + 1 for i in range(50)]
        assert ex.submit_batch([(add, (1, 2), {}, {"priority": 2 ** 63 - 1})])[0].result(timeout=30) == 3
    finally:
        ex.shutdown(wait=True)       # returns: no orphan future to wait for
