"""A real two-node Slurm cluster on 127.0.0.1, owned by one test session.

Everything lives under one directory the tests own: slurm.conf, the munge key and
socket, state, spool, logs and pid files. The daemons are munged, slurmctld and one
slurmd per node (`slurmd -N n1`, `slurmd -N n2`: multiple-slurmd support lets two
"nodes" share this machine). Ports are picked free at start so that another cluster on
this machine cannot collide. Slurm's commands find the cluster through $SLURM_CONF,
which `env()` sets; `stop()` ends exactly the daemons this module started, by pid.

Run by hand: `python3 tests/slurmcluster.py DIR` starts a cluster and prints the
variables to export; Ctrl-C stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

NODES = ("n1", "n2")
DAEMONS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "srun", "scancel")


class SlurmUnavailable(RuntimeError):
    """Slurm or munge is not installed here (the caller may skip)."""


def _free_ports(count: int) -> List[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _find(name: str) -> Optional[str]:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def missing_programs() -> List[str]:
    """The Slurm and munge programs this machine lacks."""
    return [name for name in DAEMONS if _find(name) is None]


class SlurmCluster:
    """munged + slurmctld + a slurmd per node, configured under root.

    Args:
        root: A directory the caller owns (created; everything goes inside it).
        nodes: Node names; each gets CPUs=2 (this machine's cores).
    """

    def __init__(self, root: Path, nodes: Sequence[str] = NODES) -> None:
        self.root = Path(root)
        self.nodes = list(nodes)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._pid_files: List[Path] = []

    def env(self) -> Dict[str, str]:
        """Environment variables that point Slurm's commands at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm command against this cluster (text output captured)."""
        env = dict(kwargs.pop("env", None) or os.environ, **self.env())
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(list(command), env=env, **kwargs)

    # -- starting ------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration, start every daemon, wait until each node is idle."""
        missing = missing_programs()
        if missing:
            raise SlurmUnavailable(
                f"missing {', '.join(missing)}: apt-get install -y slurm-wlm munge"
            )
        for sub in ("munge", "state", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write_conf()
        self._start_munge()
        self._daemon([_find("slurmctld"), "-c", "-i", "-f", str(self.conf)], "slurmctld.pid")
        for node in self.nodes:
            self._daemon([_find("slurmd"), "-N", node, "-f", str(self.conf)], f"slurmd-{node}.pid")
        self._wait_idle(timeout)

    def _write_conf(self) -> None:
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        lines = [
            "ClusterName=portaltest",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
            "MpiDefault=none",
            "ReturnToService=2",
            "KillWait=5",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'state'}/slurmd-%n",
            f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'run'}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log'}/slurmd-%n.log",
        ]
        for node, port in zip(self.nodes, node_ports):
            lines.append(
                f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                "CPUs=2 State=UNKNOWN"
            )
        lines.append(f"PartitionName=test Nodes={','.join(self.nodes)} Default=YES State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        key = munge / "munge.key"
        if not key.exists():
            subprocess.run(
                [_find("mungekey"), "--create", "--keyfile", str(key)],
                check=True,
                capture_output=True,
            )
        key.chmod(0o400)
        self._daemon(
            [
                _find("munged"),
                "--force",  # root-owned files under a test dir: munged's checks want /etc
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            "../munge/munged.pid",
        )

    def _daemon(self, command: List[str], pid_name: str) -> None:
        """Run a self-daemonizing program and remember its pid file."""
        pid_file = (self.root / "run" / pid_name).resolve()
        done = subprocess.run(
            command, env=dict(os.environ, **self.env()), capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"{self._log_tails()}"
            )
        self._pid_files.append(pid_file)
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pid_file.exists():
            raise RuntimeError(f"{command[0]} wrote no pid file {pid_file}\n{self._log_tails()}")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            done = self.run(["sinfo", "-h", "-N", "-o", "%t"], timeout=10)
            states = done.stdout.split()
            if done.returncode == 0 and states == ["idle"] * len(self.nodes):
                return
            time.sleep(0.1)
        raise RuntimeError(f"Slurm nodes not idle after {timeout}s: {states}\n{self._log_tails()}")

    def _log_tails(self) -> str:
        parts = []
        for log in sorted(self.root.glob("log/*.log")) + [self.root / "munge" / "munged.log"]:
            if log.exists():
                parts.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-8:]))
        return "\n".join(parts)

    # -- stopping ------------------------------------------------------------

    def pids(self) -> List[int]:
        """Pids of this cluster's running daemons."""
        pids = []
        for path in self._pid_files:
            try:
                pids.append(int(path.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return pids

    def stop(self) -> None:
        """SIGTERM every daemon this cluster started (slurmd first, munged last), by pid."""
        for pid in reversed(self.pids()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._pid_files.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


if __name__ == "__main__":
    cluster = SlurmCluster(Path(sys.argv[1]))
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
