"""The names a benchmark script uses, in one import (``from benchmarks import common as C``).

The harness itself lives in ``benchmarks/harness/`` (one module per job; its package docstring explains
the parent/child roles every script runs in); this module only re-exports it.
"""
from __future__ import annotations

from benchmarks.harness.child import (SETTINGS, TAG_ENV, add_common_args, child_main, child_tmpdir,  # noqa: F401
                                      parse_common, run_child, run_systems, tagged_processes)
from benchmarks.harness.load import BUSY_CPU_PERCENT, machine_load, wait_for_quiet  # noqa: F401
from benchmarks.harness.peers import (System, make_faas_executor, make_htex, parsl_cleanup, parsl_load,  # noqa: F401
                                      wait_all)
from benchmarks.harness.procs import RssPeak, cpu_delta, process_cpu, process_roles, tree_cpu, tree_rss  # noqa: F401
from benchmarks.harness.report import (BENCH_DIR, REPO_ROOT, RESULTS_DIR, busy_note, finish, fmt_mib,  # noqa: F401
                                       fmt_ms, fmt_rate, fmt_ratio, fmt_s, fmt_us, machine_info, print_table,
                                       write_results)
from benchmarks.harness.stats import (RssSampler, malloc_trim, median, now, percentile, ratio,  # noqa: F401
                                      rss_bytes, summarize_latencies, verdict)

__all__ = [
    "BENCH_DIR",
    "BUSY_CPU_PERCENT",
    "REPO_ROOT",
    "RESULTS_DIR",
    "RssPeak",
    "RssSampler",
    "SETTINGS",
    "System",
    "TAG_ENV",
    "add_common_args",
    "busy_note",
    "child_main",
    "child_tmpdir",
    "cpu_delta",
    "finish",
    "fmt_mib",
    "fmt_ms",
    "fmt_rate",
    "fmt_ratio",
    "fmt_s",
    "fmt_us",
    "machine_info",
    "machine_load",
    "make_faas_executor",
    "make_htex",
    "malloc_trim",
    "median",
    "now",
    "parse_common",
    "parsl_cleanup",
    "parsl_load",
    "percentile",
    "print_table",
    "process_cpu",
    "process_roles",
    "ratio",
    "rss_bytes",
    "run_child",
    "run_systems",
    "summarize_latencies",
    "tagged_processes",
    "tree_cpu",
    "tree_rss",
    "verdict",
    "wait_all",
    "wait_for_quiet",
    "write_results",
]
