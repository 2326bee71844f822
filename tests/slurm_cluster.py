"""
A real single-node SLURM cluster for the tests: Debian's slurmctld, slurmd and munge, installed
if missing (root and apt-get needed), configured in a temporary folder (nothing under /etc is
touched: SLURM_CONF points the commands at it), started, and stopped afterwards. The node is
this machine with its CPUs, proctrack/linuxproc and task/none (no cgroups needed).
"""
import os
import shutil
import socket
import subprocess
import time

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "squeue", "scontrol", "sinfo")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why."""


def _missing():
    return [p for p in PROGRAMS if shutil.which(p) is None]


def install():
    """Install Debian's SLURM and munge if they are missing."""
    if not _missing():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"{', '.join(_missing())} not installed, and installing needs root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    if _missing():
        raise SlurmUnavailable(f"{', '.join(_missing())} still missing after installing {', '.join(PACKAGES)}")


class LocalSlurm:
    """munged, slurmctld and slurmd in `root`, on free ports; `env` is what SLURM commands need."""

    def __init__(self, root, cpus=None, ctld_port=6817):
        self.root = str(root)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.port = ctld_port
        self.conf = os.path.join(self.root, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.pid_files = []

    def _path(self, *parts):
        return os.path.join(self.root, *parts)

    def start(self):
        install()
        for folder in ("state", "spool", "log", "munge"):
            os.makedirs(self._path(folder), exist_ok=True)
        os.chmod(self._path("munge"), 0o700)
        key = self._path("munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        socket_path = self._path("munge", "munge.socket")
        self._run(["munged", f"--key-file={key}", f"--socket={socket_path}", "--force",
                   f"--pid-file={self._path('munge', 'munged.pid')}", f"--log-file={self._path('munge', 'munged.log')}",
                   f"--seed-file={self._path('munge', 'seed')}"])
        self.pid_files.append(self._path("munge", "munged.pid"))
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=retina_test
SlurmctldHost={self.node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
SlurmctldPort={self.port}
SlurmdPort={self.port + 1}
StateSaveLocation={self._path('state')}
SlurmdSpoolDir={self._path('spool')}
SlurmctldPidFile={self._path('slurmctld.pid')}
SlurmdPidFile={self._path('slurmd.pid')}
SlurmctldLogFile={self._path('log', 'slurmctld.log')}
SlurmdLogFile={self._path('log', 'slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MpiDefault=none
KillWait=20
MinJobAge=600
NodeName={self.node} CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
""")
        self._run(["slurmctld", "-f", self.conf])
        self.pid_files.append(self._path("slurmctld.pid"))
        self._run(["slurmd", "-f", self.conf])
        self.pid_files.append(self._path("slurmd.pid"))
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise SlurmUnavailable(f"the node did not become idle (sinfo: {state!r}); see {self._path('log')}")

    def _step_daemons(self):
        """The pids of this slurmd's children (its slurmstepd processes)."""
        try:
            with open(self._path("slurmd.pid")) as f:
                slurmd = f.read().strip()
        except OSError:
            return []
        children = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == slurmd:  # the parent's pid, after the state
                children.append(int(entry))
        return children

    def _run(self, command):
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            self.stop()
            raise SlurmUnavailable(f"{command[0]} did not start: {(done.stderr or done.stdout).strip()[-500:]}")

    def stop(self):
        """Stop what start() started: any job still running, the daemons newest first, and the
        step daemons (slurmstepd, which keep slurmd's command line) of jobs they left behind."""
        step_daemons = self._step_daemons()
        subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True)
        deadline = time.time() + 30
        while time.time() < deadline:  # let the cancelled jobs' steps finish while munge is up
            queue = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True)
            if queue.returncode != 0 or not queue.stdout.strip():
                break
            time.sleep(0.5)
        for pid_file in reversed(self.pid_files):
            try:
                with open(pid_file) as f:
                    pid = int(f.read().strip())
                os.kill(pid, 15)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except (OSError, ValueError):
                continue
        for pid in step_daemons:  # a step whose job outlived munge waits for it forever
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        self.pid_files = []
