"""Per-task resource specifications: cores and memory honoured on the worker, bad values rejected."""
import pytest

from faasx.errors import InvalidResourceSpecification


def affinity_and_threads():
    import os
    return len(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS")


def allocate(mb):
    block = bytearray(mb * 2**20)
    return len(block)


def test_cores_limit_the_tasks_cpus_and_are_restored_after(ex):
    limited = ex.submit_batch([(affinity_and_threads, (), {}, {"cores": 1})])[0].result(timeout=30)
    assert limited == (1, "1")
    # the same workers run unrestricted tasks afterwards
    free = {ex.submit(affinity_and_threads).result(timeout=30) for _ in range(6)}
    import os
    assert all(n == len(os.sched_getaffinity(0)) and omp is None for n, omp in free), free


def test_memory_caps_the_task_with_a_memory_error_and_the_worker_survives(ex):
    over = ex.submit_batch([(allocate, (400,), {}, {"memory": 100})])[0]
    with pytest.raises(MemoryError):
        over.result(timeout=30)
    within = ex.submit_batch([(allocate, (20,), {}, {"memory": 100})])[0]
    assert within.result(timeout=30) == 20 * 2**20
    assert ex.submit(allocate, 400).result(timeout=30) == 400 * 2**20     # limit restored


@pytest.mark.parametrize("spec", [{"cores": "two"}, {"memory": -1}, {"priority": "high"}, {"gpus": True},
                                  {"walltime_ish": 3}])
def test_bad_resource_specifications_fail_at_submit(ex, spec):
    with pytest.raises(InvalidResourceSpecification):
        ex.submit_batch([(allocate, (1,), {}, spec)])


def test_a_gpu_task_on_nodes_without_accelerators_fails_clearly_instead_of_waiting(ex):
    """The shared executor's workers have no accelerators: nothing could ever run this task."""
    fut = ex.submit_batch([(affinity_and_threads, (), {}, {"gpus": 1})])[0]
    with pytest.raises(Exception, match="needs 'gpu'.*no accelerators"):
        fut.result(timeout=30)
    assert ex.submit(allocate, 1).result(timeout=30) == 2**20
