"""A private single-node SLURM for tests: munged, slurmctld and slurmd run from a temporary folder.

The configuration is the one measured working here (reference/environment.md §6): Debian SLURM
22.05, `auth/munge` with its own key and socket, `proctrack/linuxproc`, `task/none`,
`select/cons_tres`, free ports, every state/spool/log/pid path inside the folder. The scheduler
starts batch jobs without its default 3 s delay. Daemons run as the current user (root) in the
foreground as children of the test, and are stopped by process id.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")
PACKAGES = "slurmctld slurmd slurm-client munge"


def which(name: str) -> Optional[str]:
    """`name` on the PATH, or in the sbin folders where Debian puts the daemons."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def skip_reason() -> Optional[str]:
    """Why a real SLURM cannot be started here, or None."""
    missing = [p for p in PROGRAMS if which(p) is None]
    if missing:
        return f"no SLURM here ({', '.join(missing)} not found): `apt-get install {PACKAGES}` (.ci/run does, as root)"
    if os.geteuid() != 0:
        return "the private SLURM runs slurmd as root (SlurmdUser=root): run the tests as root, as .ci/run does"
    return None


def free_ports(count: int) -> List[int]:
    """Ports that are free now (the kernel's choice for port 0)."""
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def slurm_conf(folder: Path, munge_socket: Path) -> str:
    """One node (this host, all its CPUs, 90 % of its memory) in one default partition."""
    host, (ctld_port, d_port) = socket.gethostname().split(".")[0], free_ports(2)
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
    return "\n".join([
        "ClusterName=lowshottest", f"SlurmctldHost={host}", f"SlurmctldPort={ctld_port}", f"SlurmdPort={d_port}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={munge_socket}",
        "SlurmUser=root", "SlurmdUser=root", f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "MpiDefault=none", "ReturnToService=2",
        "SchedulerType=sched/builtin", "SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN",
        f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""])


def wait_for(ready: Callable[[], bool], seconds: float, what: str, logs: Path) -> None:
    """Poll `ready` until true; on timeout fail with the daemons' log tails."""
    end = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > end:
            tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                              for p in sorted(logs.glob("*.log")))
            raise RuntimeError(f"timed out after {seconds} s waiting for {what}\n{tails}")
        time.sleep(0.2)


def slurm(*args: str) -> str:
    """Run a SLURM client command (SLURM_CONF from the environment); its stdout."""
    return subprocess.run([which(args[0]), *args[1:]], capture_output=True, text=True, check=True).stdout


def node_idle() -> bool:
    done = subprocess.run([which("sinfo"), "-h", "-o", "%t"], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == "idle"


def queue_empty() -> bool:
    return not slurm("squeue", "-h", "-o", "%i").strip()


def _start(argv: List[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def slurm_cluster(folder: Path) -> Iterator[Path]:
    """Start munged, slurmctld and slurmd from `folder`; yield its slurm.conf, named by $SLURM_CONF meanwhile.

    On exit, cancel every job of this private cluster, stop the three daemons by process id and
    restore $SLURM_CONF.
    """
    key, sock, conf = folder / "munge.key", folder / "munge.sock", folder / "slurm.conf"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    conf.write_text(slurm_conf(folder, sock))
    old_conf, os.environ["SLURM_CONF"] = os.environ.get("SLURM_CONF"), str(conf)  # for clients, daemons and jobs
    procs = [_start([which("munged"), "-F", "--force", f"--key-file={key}", f"--socket={sock}",
                     f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munged.seed",
                     f"--log-file={folder}/munged.log"], folder / "munged.out")]
    try:
        wait_for(sock.exists, 10, "munged", folder)
        procs += [_start([which(d), "-D", "-f", str(conf)], folder / f"{d}.out") for d in ("slurmctld", "slurmd")]
        wait_for(node_idle, 30, "the node to be idle", folder)
        yield conf
    finally:
        with contextlib.suppress(Exception):
            jobs = slurm("squeue", "-h", "-o", "%i").split()
            if jobs:
                slurm("scancel", *jobs)
            wait_for(queue_empty, 15, "cancelled jobs to end", folder)
        for proc in reversed(procs):
            _stop(proc)
        os.environ.pop("SLURM_CONF")
        if old_conf is not None:
            os.environ["SLURM_CONF"] = old_conf
