"""faasx inside Parsl: the only change from an HTEX config is the executor class.

    python examples/parsl_apps.py
"""
import parsl
from parsl import bash_app, join_app, python_app

import faasx


@python_app
def square(x, parsl_resource_specification={}):
    return x * x


@python_app
def total(*values):
    return sum(values)


@bash_app
def hostname(stdout=parsl.AUTO_LOGNAME):
    return "hostname"


@join_app
def sum_of_squares(n):
    return total(*[square(i) for i in range(n)])


def main():
    config = parsl.Config(executors=[faasx.FaaSExecutor(label="faasx", max_workers_per_node=2)],
                          strategy_period=1)
    with parsl.load(config):
        print("sum of squares 0..9 =", sum_of_squares(10).result())
        fut = hostname()
        fut.result()
        with open(fut.stdout) as f:
            print("bash app ran on", f.read().strip())
        print("app with priority:", square(7, parsl_resource_specification={"priority": 1}).result())


if __name__ == "__main__":
    main()
