"""A stand-in for the command line of Cobalt, the batch scheduler of ALCF's Theta.

Cobalt is retired: Theta was decommissioned at the end of 2023 and no Cobalt installation exists any
more, so faasx's ``CobaltProvider`` cannot be tested against the real thing.  This package is a small,
faithful stand-in of the part of Cobalt's command line that a pilot-job provider uses, with jobs run as
local processes.  It implements the semantics the provider relies on, not Cobalt's internals:

``qsub -n NODES -t TIME [-q QUEUE] [-A PROJECT] [-O PREFIX] [--attrs A] [--env V=X:W=Y] SCRIPT``
    ``TIME`` is minutes (``-t 30``) or ``HH:MM:SS`` (``-t 00:00:05``), as Cobalt accepted.  Options may also
    be given as ``#COBALT`` lines in the script (the command line wins).  The script must be executable.
    Prints the job id (a plain integer) on the last line of stdout, after a routing message when no queue
    was named.  Rejected submissions (unknown queue, unknown project, too many nodes, bad option, script
    not executable) print the reason on stderr and exit non-zero.  ``PREFIX.output``, ``PREFIX.error`` and
    ``PREFIX.cobaltlog`` receive the job's stdout, stderr and Cobalt's log (default prefix: the job id, in
    the submit directory).
``qstat [-u USER] [JOBID ...]``
    A table ``JobID User WallTime Nodes State Location`` under a ``====`` rule (columns as chosen by the
    ``QSTAT_HEADER`` environment variable, colon-separated, as Cobalt allowed); nothing at all when no job
    matches.  States: ``queued`` -> ``starting`` -> ``running`` -> ``exiting``; ``killing`` after ``qdel``
    or when the walltime runs out.  Finished jobs vanish from the table.
``qdel JOBID ...``
    Deletes queued jobs at once and kills running ones; unknown ids are ignored.

A job runs its script (in the directory qsub was called from, with qsub's environment) with
``COBALT_JOBID``, ``COBALT_NODEFILE`` (a file listing ``localhost`` once per node), ``COBALT_PARTNAME``,
``COBALT_PARTSIZE`` and ``COBALT_JOBSIZE`` set.  When the script ends, is deleted, or outlives its
walltime, every process the job started is killed -- found by a marker in their environment, so processes
that left the job's process group die too, as they would when Cobalt freed the nodes.

State lives in the directory named by ``FAASX_FAKE_COBALT_DIR`` (one JSON file per job).  Test knobs, in
``config.json`` there (see ``DEFAULT_CONFIG``): time spent queued / starting / exiting, the queues and
projects that exist, the node limit; and ``qstat_failures`` (a file holding a count: that many next
``qstat`` calls fail as if the Cobalt server did not answer).

``aprun`` (Cray ALPS, which Theta's Cobalt jobs used to reach their compute nodes) is here too, so that
``CobaltProvider``'s default ``AprunLauncher`` runs: it starts ``-n`` copies of a command on "nodes" that
are all this machine, and only inside a job (see the ``aprun`` script).

Each job is driven by a small detached "runner" process (``_cobalt.py run DIR JOBID``), playing the part
of Cobalt's server and the MOM node for that job.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Optional

ENV_DIR = "FAASX_FAKE_COBALT_DIR"
JOB_MARKER_ENV = "FAASX_FAKE_COBALT_JOB"

DEFAULT_CONFIG = {
    "queue_seconds": 0.3,      # time a job stays 'queued'
    "start_seconds": 0.2,      # time in 'starting' (Cobalt booted the partition here)
    "exit_seconds": 0.2,       # time in 'exiting' before the job vanishes from qstat
    "kill_grace_seconds": 2.0,  # SIGTERM -> SIGKILL
    "queues": ["default", "debug-cache-quad", "debug-flat-quad"],
    "default_queue": "default",
    "projects": None,          # None: any project accepted; else the list of valid ones
    "max_nodes": 16,
}

DEFAULT_QSTAT_HEADER = "JobID:User:WallTime:Nodes:State:Location"


class CobaltError(Exception):
    """A command refuses: message goes to stderr, exit code 1."""


# --------------------------------------------------------------------------- state directory

def state_dir() -> str:
    path = os.environ.get(ENV_DIR)
    if not path:
        raise CobaltError(f"cannot connect to the Cobalt server ({ENV_DIR} is not set for the stand-in)")
    os.makedirs(os.path.join(path, "jobs"), exist_ok=True)
    return path


@contextlib.contextmanager
def locked(sdir: str) -> Iterator[None]:
    with open(os.path.join(sdir, ".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_config(sdir: str) -> dict:
    cfg = dict(DEFAULT_CONFIG)
    try:
        with open(os.path.join(sdir, "config.json")) as f:
            cfg.update(json.load(f))
    except FileNotFoundError:
        pass
    return cfg


def job_path(sdir: str, jobid: int) -> str:
    return os.path.join(sdir, "jobs", f"{jobid}.json")


def read_job(sdir: str, jobid: int) -> Optional[dict]:
    try:
        with open(job_path(sdir, jobid)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_job(sdir: str, job: dict) -> None:
    path = job_path(sdir, job["jobid"])
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(job, f)
    os.replace(tmp, path)


def all_jobs(sdir: str) -> List[dict]:
    jobs = []
    for name in os.listdir(os.path.join(sdir, "jobs")):
        if name.endswith(".json"):
            job = read_job(sdir, int(name[:-5]))
            if job is not None:
                jobs.append(job)
    return sorted(jobs, key=lambda j: j["jobid"])


def next_jobid(sdir: str) -> int:
    with locked(sdir):
        path = os.path.join(sdir, "next_jobid")
        try:
            with open(path) as f:
                jobid = int(f.read().strip() or 1)
        except FileNotFoundError:
            jobid = 1
        with open(path, "w") as f:
            f.write(str(jobid + 1))
    return jobid


def current_user() -> str:
    return os.environ.get("USER") or getpass.getuser()


def log(job: dict, text: str) -> None:
    stamp = time.strftime("%a %b %d %H:%M:%S %Y +0000 (UTC)", time.gmtime())
    with open(job["cobaltlog"], "a") as f:
        f.write(f"{stamp} {text}\n")


def hhmmss(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def parse_time(text: str) -> int:
    """Cobalt's -t: minutes, or HH:MM:SS."""
    if re.fullmatch(r"\d+", text):
        return int(text) * 60
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d)", text)
    if m:
        return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
    raise CobaltError(f"qsub: error: invalid time specification '{text}': give minutes or HH:MM:SS")


# --------------------------------------------------------------------------- qsub

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit 2 with usage; Cobalt printed the reason
        raise CobaltError(f"{self.prog}: error: {message}")


def _qsub_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qsub", add_help=False)
    p.add_argument("-n", "--nodecount", type=int)
    p.add_argument("-t", "--time")
    p.add_argument("-q", "--queue")
    p.add_argument("-A", "--project")
    p.add_argument("-O", "--outputprefix")
    p.add_argument("-o", "--output")
    p.add_argument("-e", "--error")
    p.add_argument("--debuglog")
    p.add_argument("--attrs")
    p.add_argument("--env")
    p.add_argument("--mode")
    p.add_argument("-M", "--notify")
    return p


def _qsub_script(parser, argv: List[str]):
    """(options, absolute script path, script arguments): options first, then the script and its
    arguments, which Cobalt passed on."""
    opts, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown and (not rest or rest.index(unknown[0]) == 0):
        raise CobaltError(f"qsub: error: no such option: {unknown[0]}")
    if not rest:
        raise CobaltError("qsub: error: no executable or script specified")
    script = os.path.abspath(rest[0])
    if not os.path.isfile(script):
        raise CobaltError(f"qsub: error: {rest[0]}: file not found")
    if not os.access(script, os.X_OK):
        raise CobaltError(f"qsub: error: {rest[0]}: script is not executable (chmod +x it)")
    return opts, script, rest[1:]


def _apply_directives(parser, opts, script: str) -> None:
    """#COBALT directives in the script fill the options the command line did not give."""
    directives: List[str] = []
    with open(script, errors="replace") as f:
        for line in f:
            if line.startswith("#COBALT"):
                directives += shlex.split(line[len("#COBALT"):])
    from_script = parser.parse_args(directives) if directives else argparse.Namespace()
    for key, value in vars(from_script).items():
        if getattr(opts, key, None) is None and value is not None:
            setattr(opts, key, value)


def _check_resources(opts, cfg: dict) -> int:
    """The walltime in seconds, after checking it and the node count."""
    if opts.time is None:
        raise CobaltError("qsub: error: 'time' not provided: give -t MINUTES or -t HH:MM:SS")
    if opts.nodecount is None:
        raise CobaltError("qsub: error: 'nodecount' not provided: give -n NODES")
    walltime = parse_time(opts.time)
    if walltime <= 0:
        raise CobaltError("qsub: error: walltime must be positive")
    if opts.nodecount < 1 or opts.nodecount > cfg["max_nodes"]:
        raise CobaltError(f"qsub: error: node count {opts.nodecount} out of range: "
                          f"this machine has {cfg['max_nodes']} nodes")
    return walltime


def _check_queue_and_project(opts, cfg: dict) -> str:
    """The job's queue (the default one when none was given), after checking it and the project."""
    queue = opts.queue or cfg["default_queue"]
    if queue not in cfg["queues"]:
        raise CobaltError(f"qsub: error: queue '{queue}' does not exist; "
                          f"available queues: {', '.join(cfg['queues'])}")
    if cfg["projects"] is not None and opts.project not in cfg["projects"]:
        if opts.project is None:
            raise CobaltError("qsub: error: no project specified: give -A PROJECT")
        raise CobaltError(f"qsub: error: project '{opts.project}' is not valid for user {current_user()} "
                          "(no allocation on this machine)")
    return queue


def _parse_env(text: Optional[str]) -> Dict[str, str]:
    """Cobalt's --env VAR=value:VAR2=value2."""
    extra_env: Dict[str, str] = {}
    for item in text.split(":") if text else []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CobaltError(f"qsub: error: --env: '{item}' is not VAR=value")
        extra_env[key] = value
    return extra_env


def _new_job(sdir: str, cfg: dict, opts, argv: List[str], script: str, script_args: List[str], walltime: int,
             queue: str) -> dict:
    jobid = next_jobid(sdir)
    cwd = os.getcwd()
    prefix = os.path.abspath(opts.outputprefix) if opts.outputprefix else os.path.join(cwd, str(jobid))

    def path(given: Optional[str], suffix: str) -> str:
        return os.path.abspath(given) if given else prefix + suffix

    return {
        "jobid": jobid, "user": current_user(), "nodes": opts.nodecount, "walltime": walltime, "queue": queue,
        "project": opts.project, "attrs": opts.attrs, "argv": ["qsub"] + argv, "script": script,
        "script_args": script_args, "cwd": cwd, "env": _parse_env(opts.env),
        "output": path(opts.output, ".output"), "error": path(opts.error, ".error"),
        "cobaltlog": path(opts.debuglog, ".cobaltlog"),
        "state": "queued", "submit_time": time.time(), "start_time": None, "location": None, "runner_pid": None,
        **{k: cfg[k] for k in ("queue_seconds", "start_seconds", "exit_seconds", "kill_grace_seconds")},
    }


def _start_runner(sdir: str, job: dict) -> None:
    """The job's runner process (``run``), which moves it through its states; its pid goes in the job."""
    runner = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "run", sdir, str(job["jobid"])],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, cwd=job["cwd"])
    job["runner_pid"] = runner.pid
    # the runner may already have moved the job on: only record our field
    with locked(sdir):
        current = read_job(sdir, job["jobid"])
        if current is not None:
            current["runner_pid"] = runner.pid
            write_job(sdir, current)


def qsub_main(argv: List[str]) -> int:
    sdir = state_dir()
    cfg = load_config(sdir)
    parser = _qsub_parser()
    opts, script, script_args = _qsub_script(parser, argv)
    _apply_directives(parser, opts, script)   # the command line wins
    walltime = _check_resources(opts, cfg)
    queue = _check_queue_and_project(opts, cfg)
    job = _new_job(sdir, cfg, opts, argv, script, script_args, walltime, queue)
    write_job(sdir, job)
    with open(job["cobaltlog"], "w") as f:
        f.write(f"Jobid: {job['jobid']}\n{shlex.join(job['argv'])}\n")
    log(job, f"submitted with cwd set to: {job['cwd']}")
    _start_runner(sdir, job)
    if opts.queue is None:
        print(f'Job routed to queue "{queue}".')
    print(job["jobid"])
    return 0


# --------------------------------------------------------------------------- qstat

def _take_qstat_failure(sdir: str) -> bool:
    path = os.path.join(sdir, "qstat_failures")
    with locked(sdir):
        try:
            with open(path) as f:
                left = int(f.read().strip() or 0)
        except FileNotFoundError:
            return False
        if left <= 0:
            return False
        with open(path, "w") as f:
            f.write(str(left - 1))
        return True


def _column(job: dict, name: str) -> str:
    key = name.lower()
    if key == "jobid":
        return str(job["jobid"])
    if key == "user":
        return job["user"]
    if key == "walltime":
        return hhmmss(job["walltime"])
    if key == "runtime":
        return hhmmss(time.time() - job["start_time"]) if job["start_time"] else "N/A"
    if key == "nodes":
        return str(job["nodes"])
    if key == "state":
        return job["state"]
    if key == "location":
        return job["location"] or "None"
    if key == "queue":
        return job["queue"]
    if key == "project":
        return job["project"] or "N/A"
    raise CobaltError(f"qstat: error: unknown field '{name}' in QSTAT_HEADER")


def qstat_main(argv: List[str]) -> int:
    sdir = state_dir()
    p = _Parser(prog="qstat", add_help=False)
    p.add_argument("-u", "--user")
    p.add_argument("-f", "--full", action="store_true")
    p.add_argument("jobids", nargs="*")
    opts = p.parse_args(argv)
    if _take_qstat_failure(sdir):
        raise CobaltError("qstat: failed to connect to the queue manager (cqm): Connection refused")
    wanted = set()
    for jid in opts.jobids:
        if not jid.isdigit():
            raise CobaltError(f"qstat: error: '{jid}' is not a job id")
        wanted.add(int(jid))
    jobs = [j for j in all_jobs(sdir)
            if (opts.user is None or j["user"] == opts.user) and (not wanted or j["jobid"] in wanted)]
    if not jobs:
        return 0
    header = [h for h in os.environ.get("QSTAT_HEADER", DEFAULT_QSTAT_HEADER).split(":") if h]
    rows = [[_column(j, h) for h in header] for j in jobs]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    print(fmt(header))
    print("=" * (sum(widths) + 2 * (len(widths) - 1)))
    for r in rows:
        print(fmt(r))
    return 0


# --------------------------------------------------------------------------- qdel

def qdel_main(argv: List[str]) -> int:
    sdir = state_dir()
    if not argv:
        raise CobaltError("qdel: error: no job ids given")
    deleted = []
    for jid in argv:
        if not jid.isdigit():
            raise CobaltError(f"qdel: error: '{jid}' is not a job id")
        job = read_job(sdir, int(jid))
        if job is None:
            continue  # already finished, or never existed: nothing to do
        if job["user"] != current_user():
            raise CobaltError(f"qdel: error: job {jid} belongs to {job['user']}, not {current_user()}")
        open(os.path.join(sdir, "jobs", f"{jid}.qdel"), "w").close()
        deleted.append(job)
    if deleted:
        print("      Deleted Jobs")
        print(f"{'JobID':<8}User")
        print("=" * 20)
        for job in deleted:
            print(f"{job['jobid']:<8}{job['user']}")
    return 0


# --------------------------------------------------------------------------- the runner of one job

def _marked_pids(marker: str) -> List[int]:
    """Processes whose environment carries this job's marker (they all belong to the job).

    A ``marker`` ending in "/" matches every job of that state directory.
    """
    needle = f"{JOB_MARKER_ENV}={marker}".encode()
    if not marker.endswith("/"):
        needle += b"\0"
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read():
                    pids.append(int(name))
        except OSError:
            continue
    return pids


def _kill_job_processes(marker: str, pgid: Optional[int], grace: float) -> None:
    def signal_all(sig):
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for pid in _marked_pids(marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _marked_pids(marker):
        time.sleep(0.05)
    signal_all(signal.SIGKILL)


def run_job(sdir: str, jobid: int) -> int:
    job = read_job(sdir, jobid)
    if job is None:
        return 1
    qdel_flag = os.path.join(sdir, "jobs", f"{jobid}.qdel")

    def update(**fields):
        with locked(sdir):
            current = read_job(sdir, jobid) or job
            current.update(fields)
            job.update(current)
            write_job(sdir, current)

    def deleted() -> bool:
        # qdel, or the whole state directory removed (test teardown): stop either way
        return os.path.exists(qdel_flag) or not os.path.exists(job_path(sdir, jobid))

    def wait(seconds: float) -> bool:
        """Sleep, but return True at once if the job is deleted meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if deleted():
                return True
            time.sleep(0.02)
        return deleted()

    def vanish():
        for path in (job_path(sdir, jobid), qdel_flag, nodefile):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    nodefile = os.path.join(sdir, "jobs", f"{jobid}.nodefile")
    if wait(job["queue_seconds"]):
        log(job, f"Info: job {jobid} deleted by {job['user']} while queued")
        vanish()
        return 0
    partname = "0" if job["nodes"] == 1 else f"0-{job['nodes'] - 1}"
    update(state="starting", location=partname)
    with open(nodefile, "w") as f:
        f.write("localhost\n" * job["nodes"])
    if wait(job["start_seconds"]):
        log(job, f"Info: job {jobid} deleted by {job['user']} while starting")
        vanish()
        return 0

    marker = f"{sdir}/{jobid}"
    env = dict(os.environ)
    env.update(job["env"])
    env.update({
        "COBALT_JOBID": str(jobid),
        "COBALT_NODEFILE": nodefile,
        "COBALT_PARTNAME": partname,
        "COBALT_PARTSIZE": str(job["nodes"]),
        "COBALT_JOBSIZE": str(job["nodes"]),
        "COBALT_QUEUE": job["queue"],
        JOB_MARKER_ENV: marker,
    })
    with open(job["output"], "ab") as out, open(job["error"], "ab") as err:
        try:
            proc = subprocess.Popen([job["script"]] + job["script_args"], cwd=job["cwd"], env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        except OSError as e:
            err.write(f"Cobalt could not start {job['script']}: {e}\n".encode())
            log(job, f"Info: task could not be started: {e}")
            update(state="exiting")
            time.sleep(job["exit_seconds"])
            vanish()
            return 0
    start = time.time()
    update(state="running", start_time=start)
    log(job, f"Info: job {jobid} started on partition {partname} ({job['nodes']} nodes)")

    reason = None
    while proc.poll() is None:
        if deleted():
            reason = "deleted"
            break
        if time.time() >= start + job["walltime"]:
            reason = "walltime"
            break
        time.sleep(0.02)
    if reason is not None:
        update(state="killing")
        if reason == "walltime":
            log(job, f"Info: maximum execution time of {hhmmss(job['walltime'])} exceeded; killing job")
        else:
            log(job, f"Info: job {jobid} deleted by {job['user']}; killing job")
    _kill_job_processes(marker, proc.pid, job["kill_grace_seconds"])  # leftovers die with the job
    code = proc.wait()
    update(state="exiting")
    if code < 0:
        code = 128 - code  # killed by a signal: report it as a shell would
    log(job, f"Info: task completed normally with an exit code of {code}; initiating job cleanup and removal")
    time.sleep(job["exit_seconds"])
    vanish()
    return 0


# --------------------------------------------------------------------------- control, for tests

BIN_DIR = os.path.dirname(os.path.abspath(__file__))


class FakeCobalt:
    """The test side of the stand-in: configure it, inspect jobs, inject faults, clean up.

    Put ``BIN_DIR`` first on ``PATH`` and set ``FAASX_FAKE_COBALT_DIR`` to ``directory`` (the pytest
    fixture does both); then ``qsub``/``qstat``/``qdel`` are the stand-in's.
    """

    def __init__(self, directory: str):
        self.dir = os.path.abspath(directory)
        os.makedirs(os.path.join(self.dir, "jobs"), exist_ok=True)
        self._runners: set = set()

    def configure(self, **settings) -> None:
        """Change ``DEFAULT_CONFIG`` settings for jobs submitted from now on."""
        unknown = set(settings) - set(DEFAULT_CONFIG)
        if unknown:
            raise KeyError(f"unknown stand-in settings: {sorted(unknown)}")
        path = os.path.join(self.dir, "config.json")
        current = {}
        if os.path.exists(path):
            with open(path) as f:
                current = json.load(f)
        current.update(settings)
        with open(path, "w") as f:
            json.dump(current, f)

    def fail_next_qstat(self, times: int) -> None:
        with locked(self.dir):
            with open(os.path.join(self.dir, "qstat_failures"), "w") as f:
                f.write(str(times))

    def qstat_failures_left(self) -> int:
        try:
            with open(os.path.join(self.dir, "qstat_failures")) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0

    def jobs(self) -> Dict[int, dict]:
        """Jobs Cobalt still knows (the ones ``qstat`` lists), by id."""
        found = {j["jobid"]: j for j in all_jobs(self.dir)}
        self._runners.update(j["runner_pid"] for j in found.values() if j.get("runner_pid"))
        return found

    def job_processes(self) -> List[int]:
        """Live processes started by any job of this stand-in (they should be none after a job ends)."""
        return _marked_pids(f"{self.dir}/")

    def shutdown(self, timeout: float = 15.0) -> None:
        """Delete every job, wait for the runners to finish, kill anything left over."""
        for job in self.jobs().values():
            open(os.path.join(self.dir, "jobs", f"{job['jobid']}.qdel"), "w").close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.jobs() or self._live_runners()):
            time.sleep(0.05)
        for pid in self._live_runners() + self.job_processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _live_runners(self) -> List[int]:
        live = []
        for pid in self._runners:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"_cobalt.py" in f.read():
                        live.append(pid)
            except OSError:
                continue
        return live


# --------------------------------------------------------------------------- entry points

def main(command: str, argv: List[str]) -> int:
    try:
        if command == "qsub":
            return qsub_main(argv)
        if command == "qstat":
            return qstat_main(argv)
        if command == "qdel":
            return qdel_main(argv)
        if command == "run":
            return run_job(argv[0], int(argv[1]))
        raise CobaltError(f"unknown command {command}")
    except CobaltError as e:
        print(str(e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
