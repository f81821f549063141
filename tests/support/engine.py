"""The container engine as the image tests drive it (podman with runc, or docker with
`ENGINE=docker`): this sandbox's rlimits, the hardened run flags, the spellings that differ,
and a directory shaped like a mounted ConfigMap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

IMAGE = "localhost/credfresh:dev"
UID = 10001
ENGINE = os.environ.get("ENGINE", "podman")
DOCKER = ENGINE == "docker"
#: crun cannot run here (cgroups in hybrid mode): podman gets runc; docker uses runc anyway.
COMMAND = ("docker",) if DOCKER else ("podman", "--runtime", "runc")
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")  # raising is refused
HARDENED = (
    "--read-only",
    "--user",
    f"{UID}:{UID}",
    "--cap-drop=all",
    "--security-opt",
    "no-new-privileges",
)


def engine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def image_exists(image: str = IMAGE) -> bool:
    verb = ("image", "inspect") if DOCKER else ("image", "exists")
    return engine(*verb, image).returncode == 0


def remove(name: str) -> None:
    """Remove a container, gone or not."""
    if DOCKER:
        engine("rm", "--force", name)
    else:
        engine("rm", "--force", "--ignore", "--time", "0", name)


def healthcheck(name: str) -> subprocess.CompletedProcess[str]:
    """Run the image's HEALTHCHECK once, now: podman has a command for it; with docker, its
    `CMD` from the image's config is run in the container, as dockerd would."""
    if not DOCKER:
        return engine("healthcheck", "run", name)
    found = engine("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", IMAGE)
    test = json.loads(found.stdout)
    assert test[0] == "CMD", test
    return engine("exec", name, *test[1:])


def tmpfs(target: str, uid: int = UID) -> tuple[str, ...]:
    """A private tmpfs, mode 0700, owned by the container's user."""
    if DOCKER:
        return ("--tmpfs", f"{target}:rw,mode=0700,uid={uid},gid={uid}")
    return ("--mount", f"type=tmpfs,destination={target},tmpfs-mode=0700,chown=true")


def run_argv(name: str, *options: str, args: tuple[str, ...] = ()) -> list[str]:
    """`run` of the image in the foreground, as the pod runs it: the host network (the
    dev STS is on its loopback), no root, no capabilities, a read-only root."""
    return [
        *COMMAND,
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        *LIMITS,
        *HARDENED,
        *options,
        IMAGE,
        *args,
    ]


def volume(host: Path, target: str, *, read_only: bool = False) -> tuple[str, str]:
    return ("--volume", f"{host}:{target}:{'ro' if read_only else 'rw'}")


class ConfigMapDir:
    """A directory as the kubelet mounts a ConfigMap: each key is a symlink through `..data`,
    which points at a timestamped directory; `publish` swaps `..data` by rename."""

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o755)
        self.root = root
        self._version = 0

    def publish(self, files: Mapping[str, str]) -> None:
        self._version += 1
        version = self.root / f"..2026_12_02_00_00_{self._version:02d}.{self._version}"
        version.mkdir(mode=0o755)
        for key, text in files.items():
            (version / key).write_text(text)
            (version / key).chmod(0o644)
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        staged.replace(self.root / "..data")
        for key in files:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        for old in self.root.glob("..2*"):
            if old != version:
                shutil.rmtree(old)
