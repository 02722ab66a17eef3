"""exporter.sources.procfs: container of a process from fixture /proc trees."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from e2e import value

from exporter.agent import Agent
from exporter.cli import build_sources
from exporter.config import parse_config
from exporter.model.gpu import Gpu, GpuIdentity, GpuProcess
from exporter.model.kube import ContainerRef, ProcessOwners
from exporter.sources.procfs import NotInProcfs, Procfs, container_of, parse_cgroup_file, shares_pid_namespace

UID = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
UID_ = UID.replace("-", "_")
CID = "a" * 8 + "0123456789abcdef" * 3 + "b" * 8  # 64 hex
CID2 = "c1" * 32


def write_proc(procfs: Path, pid: int, text: str) -> None:
    d = procfs / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup").write_text(text)


V1_CGROUPFS_DOCKERLESS = f"""\
12:hugetlb:/kubepods/burstable/pod{UID}/{CID}
11:pids:/kubepods/burstable/pod{UID}/{CID}
10:memory:/kubepods/burstable/pod{UID}/{CID}
4:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}
1:name=systemd:/kubepods/burstable/pod{UID}/{CID}
0::/
"""

V1_SYSTEMD_CONTAINERD = f"""\
12:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope
11:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope
1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope
"""

CASES = {
    "v2-systemd-containerd-burstable": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope\n"
    ),
    "v2-systemd-containerd-guaranteed": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
    ),
    "v2-systemd-crio": (
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-{CID}.scope\n"
    ),
    "v2-systemd-docker": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"docker-{CID}.scope\n"
    ),
    "v2-cgroupfs-burstable": f"0::/kubepods/burstable/pod{UID}/{CID}\n",
    "v2-cgroupfs-besteffort": f"0::/kubepods/besteffort/pod{UID}/{CID}\n",
    "v2-cgroupfs-guaranteed": f"0::/kubepods/pod{UID}/{CID}\n",
    "v2-nested-kind": (
        f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
        f"kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
    ),
    "v2-subcgroup-inside-container": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope\n"
    ),
    # The reader in its own cgroup namespace (containerd's default on cgroup v2): other pods'
    # paths are relative to the reader's cgroup, often without "kubepods".
    "v2-cgroupns-cgroupfs-other-qos": f"0::/../../besteffort/pod{UID}/{CID}\n",
    "v2-cgroupns-cgroupfs-same-qos": f"0::/../pod{UID}/{CID}\n",
    "v2-cgroupns-cgroupfs-guaranteed": f"0::/../../pod{UID}/{CID}\n",
    "v2-cgroupns-systemd": (
        f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
    ),
    "v2-cgroupns-systemd-via-kubepods-slice": (
        f"0::/../../../kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope\n"
    ),
    "v2-cgroupns-systemd-crio": f"0::/../../kubepods-pod{UID_}.slice/crio-{CID}.scope\n",
    "v2-no-qos-cgroups": f"0::/pod{UID}/{CID}\n",  # kubelet cgroupsPerQOS: false
    "v1-cgroupfs": V1_CGROUPFS_DOCKERLESS,
    "v1-systemd-containerd": V1_SYSTEMD_CONTAINERD,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_container_paths(tmp_path: Path, name: str) -> None:
    write_proc(tmp_path, 4242, CASES[name])
    assert container_of(4242, str(tmp_path)) == ContainerRef(pod_uid=UID, container_id=CID)


@pytest.mark.parametrize(
    "text",
    [
        "0::/system.slice/containerd.service\n",
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "0::/\n",
        "12:pids:/system.slice/kubelet.service\n1:name=systemd:/system.slice/kubelet.service\n",
        # CRI-O's conmon is not the container
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"crio-conmon-{CID}.scope\n",
        # the pod cgroup itself, no container level
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice\n",
        f"0::/kubepods/burstable/pod{UID}\n",
        # relative paths from inside a cgroup namespace
        "0::/../../system.slice/containerd.service\n",
        "0::/../../../user.slice/user-1000.slice/session-3.scope\n",
        f"0::/../../kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope\n",
        f"0::/../../kubepods-burstable-pod{UID_}.slice\n",
        f"0::/../pod{UID}\n",
        f"0::/../{CID}\n",  # a sibling container of the reader's own pod: no pod segment
        # "pod<uid>" must be a whole segment (or end a "-" prefixed one)
        f"0::/system.slice/mypod{UID}/{CID}\n",
        f"0::/system.slice/x-pod{UID}.service/{CID}\n",
        "",
        "garbage without colons\n",
    ],
    ids=["containerd-service", "user-session", "root", "v1-host", "crio-conmon",
         "pod-slice", "pod-cgroupfs", "rel-containerd-service", "rel-user-session",
         "rel-crio-conmon", "rel-pod-slice", "rel-pod-cgroupfs", "rel-sibling", "not-a-pod-segment",
         "pod-segment-not-a-slice", "empty", "garbage"],
)
def test_not_a_container(tmp_path: Path, text: str) -> None:
    write_proc(tmp_path, 1, text)
    assert container_of(1, str(tmp_path)) is None


def test_v1_prefers_pids_memory_cpu_lines() -> None:
    # A (made-up) file where an odd controller points elsewhere: the pids line wins.
    text = (
        f"9:perf_event:/kubepods/burstable/pod{UID}/{CID2}\n"
        f"11:pids:/kubepods/burstable/pod{UID}/{CID}\n"
    )
    assert parse_cgroup_file(text) == ContainerRef(UID, CID)


def test_v2_line_preferred_in_hybrid() -> None:
    text = (
        f"1:name=systemd:/kubepods/burstable/pod{UID}/{CID2}\n"
        f"0::/kubepods/burstable/pod{UID}/{CID}\n"
    )
    assert parse_cgroup_file(text) == ContainerRef(UID, CID)


def test_static_pod_uid_without_dashes() -> None:
    static_uid = "6d4d0ba4b8d8e5d2c7f0e6a5b4c3d2e1"
    text = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{static_uid}.slice/cri-containerd-{CID}.scope\n"
    assert parse_cgroup_file(text) == ContainerRef(static_uid, CID)


def test_a_pid_procfs_does_not_show_is_not_a_host_process(tmp_path: Path) -> None:
    """Not in procfs (exited, or a pid of another pid namespace, pid 0 included) and unreadable
    are told apart from "not a container": neither is a host process."""
    for pid in (99999, 0, -1):
        with pytest.raises(NotInProcfs):
            container_of(pid, str(tmp_path))
    with pytest.raises(NotInProcfs):
        container_of(1, str(tmp_path / "no-procfs"))
    d = tmp_path / "7"
    d.mkdir()
    (d / "cgroup").mkdir()  # a directory: IsADirectoryError
    with pytest.raises(OSError) as raised:
        container_of(7, str(tmp_path))
    assert not isinstance(raised.value, NotInProcfs)
    if os.geteuid() != 0:
        write_proc(tmp_path, 8, CASES["v2-cgroupfs-guaranteed"])
        (tmp_path / "8" / "cgroup").chmod(0)
        with pytest.raises(PermissionError):
            container_of(8, str(tmp_path))


def host_procfs(root: Path, *, self_pid: int | None = None) -> Path:
    """A fixture procfs: init (pid 1) on the host, and ``self`` naming ``self_pid`` if given."""
    write_proc(root, 1, "0::/init.scope\n")
    if self_pid is not None:
        (root / "self").symlink_to(str(self_pid))
    return root


def test_procfs_places_each_pid_in_a_container_on_the_host_or_nowhere(tmp_path: Path) -> None:
    procfs = host_procfs(tmp_path)
    write_proc(procfs, 10, CASES["v2-systemd-crio"])
    write_proc(procfs, 11, "0::/system.slice/sshd.service\n")
    write_proc(procfs, 12, f"0::/kubepods/pod{UID}/{CID2}\n")
    (procfs / "14").mkdir()
    (procfs / "14" / "cgroup").mkdir()
    got = Procfs(str(procfs)).owners([10, 11, 12, 13, 0, 14])
    assert got.containers == {10: ContainerRef(UID, CID), 12: ContainerRef(UID, CID2)}
    assert got.host == {11} and got.missing == {13, 0} and set(got.unreadable) == {14}
    assert [pid for pid in (10, 11, 12, 13, 0, 14) if got.placed(pid)] == [10, 11, 12]


@pytest.mark.parametrize("layout", ["absent", "empty", "no-init"])
def test_a_procfs_that_is_not_mounted_fails_even_without_processes(tmp_path: Path, layout: str) -> None:
    """An absent or empty --path.procfs (a hostPath not mounted) is an error, not "no process
    is in a container": ``<procfs>/1/cgroup`` must be readable, every cycle."""
    root = tmp_path / "proc"
    if layout != "absent":
        root.mkdir()
    if layout == "no-init":
        write_proc(root, 4242, CASES["v2-systemd-crio"])
    with pytest.raises(OSError):
        Procfs(str(root)).owners([])
    with pytest.raises(OSError):
        Procfs(str(root)).owners([4242])


def test_pid_namespace_of_procfs_against_the_agents_own(tmp_path: Path) -> None:
    assert shares_pid_namespace("/proc") is True  # the live procfs of this process's own namespace
    assert shares_pid_namespace(str(host_procfs(tmp_path / "same", self_pid=os.getpid()))) is True
    assert shares_pid_namespace(str(host_procfs(tmp_path / "host", self_pid=os.getpid() + 100_000))) is False
    assert shares_pid_namespace(str(host_procfs(tmp_path / "fixture"))) is None


def test_process_lists_count_as_complete_in_the_same_pid_namespace_or_once_a_host_pid_is_seen(tmp_path: Path) -> None:
    same = Procfs(str(host_procfs(tmp_path / "same", self_pid=os.getpid())))
    assert same.owners([]).lists_complete is True
    own = host_procfs(tmp_path / "own", self_pid=os.getpid() + 100_000)  # the agent in its own pid namespace
    write_proc(own, 11, "0::/system.slice/sshd.service\n")
    write_proc(own, 10, CASES["v2-systemd-crio"])
    procfs = Procfs(str(own))
    # Empty lists may only mean that the driver hid every other namespace's process.
    assert procfs.owners([]).lists_complete is False
    assert procfs.owners([11, 0]).lists_complete is False
    # A pid procfs places in a container: the driver reports host pids; from now on, lists are whole.
    assert procfs.owners([10]).lists_complete is True
    assert procfs.owners([]).lists_complete is True
    assert ProcessOwners().lists_complete is False


def test_a_live_procfs_agrees_with_the_parser() -> None:
    # Whatever this test runs in (a container or not), reading the live /proc/self/cgroup must give
    # exactly what parsing its text gives, and a pid beyond pid_max is not there.
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        expected = parse_cgroup_file(f.read())
    assert container_of(os.getpid()) == expected
    with pytest.raises(NotInProcfs):
        container_of(2**22 + 12345)
    owners = Procfs("/proc").owners([os.getpid()])
    assert owners.placed(os.getpid()) and owners.lists_complete


# -- The agent's procfs collector -------------------------------------------------------------

GPU = "GPU-00000000-1111-2222-3333-444444444444"


class SharedGpu:
    """A GPU backend whose one GPU runs ``pids`` (a time-sliced GPU, say)."""

    simulated = False

    def __init__(self, *pids: int) -> None:
        self.pids = pids

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def device_count(self) -> int: return 1
    def xid_counts(self) -> dict: return {}
    def error_counts(self) -> dict: return {}

    def identify(self, index: int) -> GpuIdentity:
        return GpuIdentity(index, GPU)

    def read_gpu(self, index: int) -> Gpu:
        return Gpu(index=0, uuid=GPU, processes=tuple(GpuProcess(pid, 1 << 30, 0.5) for pid in self.pids),
                   processes_read=True)


def agent_on(procfs: Path | str, *pids: int) -> Agent:
    config = parse_config(["--path.procfs", str(procfs)], environ={})
    return Agent(config, *build_sources(config, SharedGpu(*pids)))


async def cycle(agent: Agent) -> str:
    return (await agent.collect_once()).text.decode()


def procfs_metrics(body: str) -> tuple[float | None, float | None, float | None, float | None]:
    """success, errors read, errors unresolved_pid, unresolved GPU processes."""
    return (value(body, "kube_gpu_exporter_collector_success", collector="procfs"),
            value(body, "kube_gpu_exporter_collector_errors_total", collector="procfs", kind="read"),
            value(body, "kube_gpu_exporter_collector_errors_total", collector="procfs", kind="unresolved_pid"),
            value(body, "kube_gpu_exporter_unresolved_gpu_processes"))


async def test_a_procfs_that_is_not_there_fails_the_collector_from_the_first_cycle(tmp_path, caplog):
    """Without GPU processes too: a missing /host/proc mount must not read as "all is well"."""
    agent = agent_on(tmp_path / "not-mounted")
    with caplog.at_level(logging.WARNING, logger="exporter"):
        first, second = await cycle(agent), await cycle(agent)
    assert procfs_metrics(first) == (0, 1, 0, 0)
    assert procfs_metrics(second) == (0, 2, 0, 0)
    (line,) = [r.getMessage() for r in caplog.records if "procfs" in r.getMessage()]  # logged once
    assert str(tmp_path / "not-mounted") in line and "--path.procfs" in line


async def test_a_host_process_is_no_error(tmp_path):
    procfs = host_procfs(tmp_path / "proc", self_pid=os.getpid())
    write_proc(procfs, 4242, "0::/system.slice/sshd.service\n")
    assert procfs_metrics(await cycle(agent_on(procfs, 4242))) == (1, 0, 0, 0)


async def test_pids_procfs_does_not_show_are_counted_and_the_fix_named_once(tmp_path, caplog):
    """The agent in a pid namespace of its own on a driver that reports pids in it: pids that
    /host/proc does not have, or 0."""
    procfs = host_procfs(tmp_path / "proc", self_pid=os.getpid() + 100_000)
    write_proc(procfs, 4242, f"0::/kubepods/pod{UID}/{CID}\n")
    agent = agent_on(procfs, 4242, 17, 0)
    with caplog.at_level(logging.WARNING, logger="exporter"):
        first, second = await cycle(agent), await cycle(agent)
    assert procfs_metrics(first) == (0, 0, 2, 2)
    assert procfs_metrics(second) == (0, 0, 4, 2)
    (line,) = [r.getMessage() for r in caplog.records if "pid namespace" in r.getMessage()]
    assert "pids 0, 17" in line and "hostPID: true" in line and "docs/deploy.md#shared-gpus-and-hostpid" in line


async def test_pids_that_exited_in_the_hosts_pid_namespace_are_counted_without_the_namespace_line(tmp_path, caplog):
    procfs = host_procfs(tmp_path / "proc", self_pid=os.getpid())
    with caplog.at_level(logging.INFO, logger="exporter"):
        assert procfs_metrics(await cycle(agent_on(procfs, 4242))) == (0, 0, 1, 1)
    assert not [r for r in caplog.records if "pid namespace" in r.getMessage()]


async def test_the_agent_in_a_pid_namespace_of_its_own_says_so_once_at_start(tmp_path, caplog):
    procfs = host_procfs(tmp_path / "proc", self_pid=os.getpid() + 100_000)
    agent = agent_on(procfs)
    with caplog.at_level(logging.INFO, logger="exporter"):
        body = await cycle(agent)
        await cycle(agent)
    assert procfs_metrics(body) == (1, 0, 0, 0)  # nothing wrong yet: no process to place
    (line,) = [r.getMessage() for r in caplog.records if "pid namespace" in r.getMessage()]
    assert "hostPID: false" in line and "docs/deploy.md#shared-gpus-and-hostpid" in line


async def test_an_empty_path_turns_the_procfs_collector_off(tmp_path):
    """--path.procfs="" (no /host/proc mount wanted): nothing is read, nothing fails, and no
    GPU process is placed, so a shared GPU has no per-container usage and no idle holder."""
    body = await cycle(agent_on("", 4242))
    assert procfs_metrics(body) == (None, None, None, None)
    assert value(body, "kube_gpu_exporter_collector_success", collector="nvml") == 1
