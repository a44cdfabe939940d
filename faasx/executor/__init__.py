"""The faasx engine: how a function call travels from ``submit()`` to a worker and back.

::

    user thread                 I/O thread              faasx-interchange           faasx-manager (per node)   faasx-worker xN
    -----------                 ----------              -----------------           ------------------------   ---------------
    submit(fn, *a)
      fn -> (fid, code) once
      args -> payload (pickle,
        dill if needed)
      TaskFuture, futures[tid]
      outbox.append  ---------> FUNCS (once per fid)
      (wake pipe only if        TASKS [tid,fid,kind,spec]
       the thread sleeps;         + payload frames  ----> Scheduler.submit
       a lone task when
       nothing is outstanding:
       written to the link
       by the caller itself) ------------------------->
                                                          Scheduler.dispatch:
                                                           idle workers first,
                                                           then prefetch slots  ---> FUNCS (once per node)
                                                                                     TASKS batch ----------> WorkerTable.assign:
                                                                                                             adaptive batch per   --> run fn
                                                                                                             idle worker              pickle result
                                                                                     RESULTS  <------------------------------------  RESULTS
                                                          Scheduler.complete:  <---- (forwarded as is)
                                                           owner check, drop dups
                                RESULTS  <--------------- (payloads untouched)
      future resolved  <------  futures.pop(tid)

Transports: client <-> interchange and manager <-> worker are inherited Unix socketpairs (one host
each; ``channel``); interchange <-> managers is ZeroMQ over TCP, or ipc for a manager on the same host,
CurveZMQ on every address (``security``): the only hop that crosses the network.  The engine's threads
of one host share a CPU (``affinity``).  On a local block, arguments and results with big buffers
(numpy arrays, bytes-like values of 256 KiB or more) skip the hops' copies: they are written once into
a private file in /dev/shm and the frames carry a reference that the reader maps (``payloads``).

Moving parts, one module each:

``protocol``       the wire spec and the only code that builds or reads a message: hops, framing,
                   message types and bodies, dialogs, versions; ``Task``/``Result`` records.
``serialization``  dill for functions (content-addressed), pickle-then-dill for data, exceptions.
``payloads``       big buffers out of band through the run's private /dev/shm directory (one host), or
                   inline after the pickle; who writes, who unlinks, the same-host rule.
``client``         ``EngineClient``: futures table, outbox, the I/O thread, interchange liveness.
``spawn``          ``InterchangeProcess``: the client starts its interchange and shakes hands with it.
``affinity``       ``engine_cpu``: one CPU per host for the engine's own threads.
``scheduling``     ``Scheduler``: the interchange's pure decision core (queues, managers, ownership;
                   ``validate()`` checks its invariant).
``interchange``    the process around the scheduler: the client link, the managers' ROUTER socket,
                   heartbeats, expiry; one handler per message type.
``worker_table``   ``WorkerTable``: the manager's pure worker bookkeeping, adaptive batching (up to
                   ~4 ms of work, at most 256 tasks, per worker message), which workers to run.
``worker_processes`` ``WorkerProcesses``: the manager's worker processes and their socketpair channels.
``manager``        the per-node process: its event loop, registration, workers, heartbeats, drain.
                   Per-function container workers: ``faasx.containers.workers`` (the container package).
``channel``        the links within a host: framed messages over an inherited socketpair, non-blocking sends.
``sockets``        hot-path ZeroMQ send and drain.
``processes``      how faasx starts its processes: role in the command line, die with the parent.
``memo``           memoization keys and the (optionally SQLite-backed) result store.
``worker``         the process that runs functions (and a task's cores/memory limits).
``security``       the run kept private to its user: 0700/0600 files, credentials, CurveZMQ on the manager port.
``options``        the executors' options, checked at construction.
``registry``       registered functions (submit by id).
``control``        the run's control endpoint (a private Unix socket) that ``faasx status`` asks.
``task_output``    per-task markers in a worker's captured stdout/stderr (``faasx logs``).
``processes``      how faasx starts its processes (recognisable in ``ps``; which interpreter).
``parsl_executor`` ``FaaSExecutor``, the Parsl ``BlockProviderExecutor``.
``standalone``     ``faasx.Executor``, the ``concurrent.futures.Executor`` around it.
``mpi``            MPI mode's pure core: resource keys, ``PARSL_*_PREFIX`` builders, the block's nodes,
                   ``MpiWorkerTable`` (the manager's table when tasks take whole nodes of a shared pool).
``mpi_executor``   ``MPIExecutor``: ``FaaSExecutor`` in MPI mode (one manager per block), Parsl's signature.

Batch sizes on the hot path: the client sends up to 8,192 tasks per TASKS message (``SEND_BATCH``,
within ``window`` outstanding); the interchange reads up to 2,000 messages from the managers'
socket per loop iteration (``RECV_BATCH``), sends each manager that got work one TASKS message per
iteration (the queue shared among the managers with room, none past workers + prefetch), and the
client one RESULTS message per iteration.

Reliability in one paragraph: the interchange records which manager owns each task and accepts a
result only from the owner.  A worker that dies is reported by its manager (WORKER_LOST); a manager
that stops heartbeating, disconnects or says BYE is removed.  Either way its tasks go back to the
front of the queue until ``max_retries_on_system_failure`` is spent, then fail with ``WorkerLost`` /
``ManagerLost``.  Managers exit when the interchange is silent, workers die with their manager, the
interchange exits when the client process is gone, and the client fails every pending future with
``InterchangeLost`` when the interchange dies.

Only ``parsl_executor``, ``mpi_executor`` and ``standalone`` import Parsl; everything that runs on compute nodes stays
light so a manager and its workers start in a fraction of a second.
"""
