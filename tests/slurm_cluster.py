"""A single-node Slurm cluster on this machine for tests: munged, slurmctld and slurmd on 127.0.0.1 with
state, spool, logs and a munge key in a temporary folder, on free non-default ports. Needs Debian's
``slurm-wlm`` and ``munge`` (``make slurm-deps``) and root; stopped (and nothing left running) on exit."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


def available() -> str | None:
    """None when a test cluster can start here, else why not."""
    missing = [d for d in (*DAEMONS, "sbatch", "scontrol") if not shutil.which(d, path="/usr/sbin:/usr/bin:/sbin")]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing): run `make slurm-deps` as root"
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root"
    return None


def _free_port() -> int:
    """A port that is free now and lies below the kernel's ephemeral range. A port the kernel hands out (bind to 0)
    can be handed out again, to another test's outgoing connection, before slurmd binds it: once slurmd's port was
    taken so ("Address already in use"), and the node never came up."""
    first_ephemeral = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, first_ephemeral - 16384), first_ephemeral)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise RuntimeError(f"no free port below the ephemeral range (from {first_ephemeral})")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def slurm_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """Start the cluster; yield the environment (``SLURM_CONF``) that Slurm's commands need."""
    folder.mkdir(parents=True, exist_ok=True)
    munge = folder / "munge"
    munge.mkdir(mode=0o700, exist_ok=True)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    host = socket.gethostname()
    conf = folder / "slurm.conf"
    # MinJobAge: finished jobs stay visible to `scontrol show job` for 2 h (default 300 s: the paper study's first
    # jobs were gone before its last one ended).
    # cred_expire: a requeued job waits this long before it may start again (Slurm's default, 120 s, was most of
    # the requeue test's time)
    conf.write_text(f"""ClusterName=echodifftest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge / 'munge.sock'},cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=7200
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmdSpoolDir={folder / 'spool'}
StateSaveLocation={folder / 'state'}
SlurmUser=root
SlurmdUser=root
SchedulerType=sched/backfill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmctldLogFile={folder / 'slurmctld.log'}
SlurmdLogFile={folder / 'slurmd.log'}
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    pidfiles = [munge / "munged.pid", folder / "slurmctld.pid", folder / "slurmd.pid"]
    try:
        subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={munge / 'munge.sock'}",
                        f"--pid-file={pidfiles[0]}", f"--log-file={munge / 'munged.log'}",
                        f"--seed-file={munge / 'seed'}"], check=True, env=env)
        subprocess.run(["slurmctld"], check=True, env=env)
        subprocess.run(["slurmd"], check=True, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout
            if state.strip() in ("idle", "mix", "alloc"):
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"Slurm node did not come up: {state!r}; see {folder}/slurm*.log")
        yield env
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for pidfile in reversed(pidfiles):
            pid = _pid(pidfile)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for pidfile in reversed(pidfiles):
            pid, deadline = _pid(pidfile), time.time() + 20
            while pid and time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)


def wait_for_jobs(env: dict[str, str], job_ids: list[str], timeout: float) -> dict[str, str]:
    """Wait until the jobs have left the queue; return ``{job id: final state}`` (from ``scontrol``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True,
                                text=True, env=env).stdout.split()
        if not queued:
            break
        time.sleep(2)
    else:
        raise TimeoutError(f"jobs {job_ids} still queued after {timeout} s")
    states = {}
    for job in job_ids:
        out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
        states[job] = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "GONE")
    return states
