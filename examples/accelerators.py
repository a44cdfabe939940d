"""Accelerators: one device per worker, and tasks that need a GPU routed to workers that have one.

Runs on a CPU-only machine too: the workers are pinned to *device ids*, and the function reports
what it sees (on a GPU node it would see exactly one GPU).

    python examples/accelerators.py
"""
import faasx


def which_device():
    import os
    import time
    time.sleep(0.1)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def main():
    with faasx.Executor(available_accelerators=["0", "1"]) as ex:
        seen = {f.result() for f in [ex.submit(which_device) for _ in range(8)]}
        for pid, device in sorted(seen):
            print(f"worker pid {pid} sees CUDA_VISIBLE_DEVICES={device}")
        # a task asking for a GPU goes only to managers that have accelerators
        gpu_task = ex.submit_batch([(which_device, (), {}, {"gpus": 1})])[0]
        print("GPU task ran with device", gpu_task.result()[1])


if __name__ == "__main__":
    main()
