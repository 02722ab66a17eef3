"""exporter.cgroups: container of a process from fixture /proc trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.cgroups import container_of, containers_of, parse_cgroup_file
from exporter.snapshot import ContainerRef

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


def test_vanished_pid_and_unreadable(tmp_path: Path) -> None:
    assert container_of(99999, str(tmp_path)) is None  # no such pid: exited
    assert container_of(1, str(tmp_path / "no-procfs")) is None
    d = tmp_path / "7"
    d.mkdir()
    (d / "cgroup").mkdir()  # a directory: IsADirectoryError
    assert container_of(7, str(tmp_path)) is None
    if os.geteuid() != 0:
        write_proc(tmp_path, 8, CASES["v2-cgroupfs-guaranteed"])
        (tmp_path / "8" / "cgroup").chmod(0)
        assert container_of(8, str(tmp_path)) is None


def test_containers_of_skips_host_and_missing(tmp_path: Path) -> None:
    write_proc(tmp_path, 10, CASES["v2-systemd-crio"])
    write_proc(tmp_path, 11, "0::/system.slice/sshd.service\n")
    write_proc(tmp_path, 12, f"0::/kubepods/pod{UID}/{CID2}\n")
    got = containers_of([10, 11, 12, 13], str(tmp_path))
    assert got == {10: ContainerRef(UID, CID), 12: ContainerRef(UID, CID2)}


def test_a_live_procfs_agrees_with_the_parser() -> None:
    # Whatever this test runs in (a container or not), reading the live /proc/self/cgroup must give
    # exactly what parsing its text gives, and a pid beyond pid_max reads as absent.
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        expected = parse_cgroup_file(f.read())
    assert container_of(os.getpid()) == expected
    assert container_of(2**22 + 12345) is None
