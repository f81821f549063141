"""What the built image holds, and what podman's `kube play` makes of the shipped manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import REPO
from support.engine import DOCKER, IMAGE, LIMITS, engine, image_exists

pytestmark = pytest.mark.image

HOST_CAS = Path("/usr/local/share/ca-certificates")


@pytest.fixture(autouse=True)
def _image() -> None:
    assert image_exists(), f"{IMAGE} is not built: run `make image` first"


def shell(script: str, *, user: str = "10001:10001") -> str:
    """`sh -c script` in the image, with no network."""
    done = engine(
        "run", "--rm", *LIMITS, "--network", "none", "--read-only", "--user", user,
        "--entrypoint", "/bin/sh", IMAGE, "-c", script,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_no_build_tools_sources_or_host_files() -> None:
    """The venv runs credfresh without pip or setuptools; no compiler, no wheel, none of this
    repository's sources, tests or .git (the base's own Python test helpers may be there);
    `python` is not needed (the entry point and health check use the
    venv's own)."""
    out = shell(
        "credfresh --version; ls /opt/credfresh/bin;"
        " for tool in pip pip3 gcc cc make git; do command -v $tool; done;"
        " find / -xdev \\( -name .git -o -name '*.whl' -o -name pyproject.toml"
        " -o -name conftest.py -o -name 'test_pod.py' -o -name daemon_runner.py \\)"
        " -not -path '/usr/share/python-wheels/*' -print",
        user="0:0",  # to see every directory
    )
    assert out.startswith("credfresh ")
    assert "credfresh" in out.split()
    found = [line for line in out.splitlines() if line.startswith("/")]
    assert found == [], found


def test_no_certificate_from_this_machine() -> None:
    """The image's CA bundle is its base's: none of this host's added CAs (the TLS proxy's)."""
    bundle = shell("cat /etc/ssl/certs/ca-certificates.crt")
    assert "BEGIN CERTIFICATE" in bundle
    added = sorted(HOST_CAS.glob("*.crt")) if HOST_CAS.is_dir() else []
    for path in added:
        body = "".join(path.read_text().split("-----")[2].split())
        assert body[:200] not in "".join(bundle.split()), path.name


@pytest.mark.skipif(DOCKER, reason="`kube play` is podman's; docker has no equivalent")
def test_kube_play_lacks_what_the_manifests_use(tmp_path: Path) -> None:
    """podman 4.3's `kube play` cannot run config/kubernetes/deployment.yaml: it has no
    projected volumes (the IRSA token). Without them it still refuses the native sidecar
    (an init container with probes). If this starts passing, run the manifests with it."""
    manifest = tmp_path / "deployment.yaml"
    text = (REPO / "config" / "kubernetes" / "deployment.yaml").read_text()
    manifest.write_text(text.replace("registry.example.com/credfresh:0.1.0", IMAGE))
    done = engine("kube", "play", "--start=false", str(manifest))
    try:
        assert done.returncode != 0
        assert "only supported VolumeSource" in done.stderr, done.stderr
    finally:
        engine("kube", "down", str(manifest))
