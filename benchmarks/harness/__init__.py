"""The harness every benchmark script shares.

A benchmark script runs in two roles:

* the *parent* (what you start): parses flags, starts one fresh child process per system under test
  (:func:`child.run_child`), collects each child's JSON result, prints tables and ratios
  (:mod:`report`), draws them (:mod:`plots`) and writes ``benchmarks/results/*.json``.  The parent never
  imports faasx or Parsl, so nothing leaks from one system into the next.
* the *child* (``--child SYSTEM``): imports only what one system needs (:mod:`peers` builds faasx, HTEX,
  ...), measures (:mod:`stats`, :mod:`procs`), writes its result as JSON to ``--child-out`` and exits
  (:func:`child.child_main`).

Modules, one job each:

=============  ===========================================================================================
``child``      run one child bounded in time, tag everything it starts, reap strays, read its result
``load``       how busy the machine is before and while a child runs (other agents share the cores)
``stats``      clocks, percentiles, ratios, RSS sampling
``procs``      the processes a child started, by role (client, interchange, manager, worker): CPU, RSS
``peers``      the systems under test: faasx, Parsl HTEX (``parsl.load``), futures helpers
``report``     number formats, aligned tables, machine facts, results files
``plots``      PNG versions of the tables (matplotlib, optional)
=============  ===========================================================================================

``benchmarks/common.py`` re-exports the names the scripts use, so a script needs one import.
"""
