"""The Containerfile and the Kubernetes manifests, checked without a container engine."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from credfresh.config.model import parse_listen
from credfresh.config.validate import build_config
from support import REPO as ROOT

CONTAINERFILE = ROOT / "Containerfile"
MANIFESTS = ROOT / "config" / "kubernetes"
WORKLOADS = ("deployment.yaml", "job.yaml")
IRSA_TOKEN = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"


# --- the Containerfile ---------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        word, _, rest = stripped.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def one(name: str) -> str:
    found = [rest for word, rest in instructions() if word == name]
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def env_of() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def healthcheck_argv() -> list[str]:
    rest = one("HEALTHCHECK")
    command = rest[rest.index("CMD ") + 4 :].strip()
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(part) for part in argv]


class TestContainerfile:
    def test_slim_python_base(self) -> None:
        """Both stages start from `ARG BASE`, python:3.11-slim unless the build says otherwise
        (`make image` passes a Debian 12 base built here)."""
        assert one("ARG") == "BASE=python:3.11-slim"
        froms = [rest for word, rest in instructions() if word == "FROM"]
        assert froms == ["${BASE} AS install", "${BASE}"]

    def test_user_is_numeric_and_not_root(self) -> None:
        """USER is a numeric uid:gid other than 0, so runAsNonRoot can verify it."""
        uid, _, gid = one("USER").partition(":")
        assert uid.isdigit()
        assert int(uid) != 0
        assert gid == "" or (gid.isdigit() and int(gid) != 0)

    def test_installs_from_wheels_only(self) -> None:
        """The install stage copies only the context's wheels/ (made on the host by
        .ci/image.sh) and installs from them with no index; the final image takes the venv
        alone, so no wheel, source, test or .git reaches it."""
        copies = [rest for word, rest in instructions() if word == "COPY"]
        assert copies == ["wheels /wheels", "--from=install /opt/credfresh /opt/credfresh"]
        run = " ".join(rest for word, rest in instructions() if word == "RUN")
        assert "--no-index --find-links /wheels credfresh" in run
        assert "pip uninstall --yes --quiet pip setuptools" in run
        script = (ROOT / ".ci" / "image.sh").read_text()
        assert '"$ctx/wheels"' in script
        assert "pip wheel" in script

    def test_paths_it_names_are_created_for_the_user(self) -> None:
        """HOME, the credentials directory and the state directory are made and chowned to
        the image's user; the config lives where CREDFRESH_CONFIG says."""
        env = env_of()
        run = " ".join(rest for word, rest in instructions() if word == "RUN")
        uid = one("USER")
        writable = [
            env["HOME"],
            posixpath.dirname(env["AWS_SHARED_CREDENTIALS_FILE"]),
            env["STATE_DIRECTORY"],
        ]
        for path in writable:
            assert path in run.split(f"chown {uid} ", 1)[1].split("&&")[0], path
        assert posixpath.dirname(env["CREDFRESH_CONFIG"]) in run
        assert env["CREDFRESH_CONFIG"] == "/etc/credfresh/config.yaml"
        assert env["CREDFRESH_LOG_FORMAT"] == "json"
        assert one("WORKDIR") == env["HOME"]

    def test_entrypoint_is_the_console_script(self) -> None:
        """ENTRYPOINT ["credfresh"] and CMD ["run"]; the script is the one pyproject installs."""
        assert json.loads(one("ENTRYPOINT")) == ["credfresh"]
        assert json.loads(one("CMD")) == ["run"]
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())
        assert project["project"]["scripts"]["credfresh"] == "credfresh.cli:main"

    def test_run_help_works_with_the_image_environment(self, tmp_path: Path) -> None:
        """`credfresh run --help` and `credfresh --help`, through the console script's function,
        exit 0 under the image's ENV, and the top-level help lists `run`."""
        env = {
            **env_of(),
            "HOME": str(tmp_path),
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        }
        script = "import sys; from credfresh.cli import main; sys.exit(main(sys.argv[1:]))"
        for args in ([*json.loads(one("CMD")), "--help"], ["--help"]):
            done = subprocess.run(
                [sys.executable, "-c", script, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
            assert done.returncode == 0, done.stderr
        assert "run" in done.stdout
        installed = shutil.which("credfresh")
        if installed is not None:
            assert subprocess.run([installed, "run", "--help"], check=False).returncode == 0

    def test_healthcheck_is_python_getting_healthz(self) -> None:
        """The health check runs the venv's Python by absolute path (no curl in either base, no
        `python` on Debian) against 127.0.0.1:9464/healthz."""
        argv = healthcheck_argv()
        assert argv[:2] == ["/opt/credfresh/bin/python", "-c"]
        assert env_of()["PATH"].startswith("/opt/credfresh/bin:")
        assert "http://127.0.0.1:9464/healthz" in argv[2]
        compile(argv[2], "<healthcheck>", "exec")


class Health:
    """A loopback /healthz stand-in whose status the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.paths: list[str] = []
        health = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Silent."""

            def do_GET(self) -> None:
                health.paths.append(self.path)
                status = health.status if self.path == "/healthz" else 404
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])


@pytest.fixture
def health() -> Iterator[Health]:
    stand_in = Health()
    thread = threading.Thread(
        target=stand_in.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


class TestHealthcheck:
    def run(self, port: int) -> int:
        argv = healthcheck_argv()
        snippet = argv[2].replace("127.0.0.1:9464", f"127.0.0.1:{port}")
        assert snippet != argv[2]
        done = subprocess.run(
            [sys.executable, "-c", snippet], capture_output=True, timeout=15, check=False
        )
        return done.returncode

    def test_passes_on_200(self, health: Health) -> None:
        """The snippet, pointed at a loopback stand-in, GETs /healthz and exits 0 on 200."""
        assert self.run(health.port) == 0
        assert health.paths == ["/healthz"]

    def test_fails_on_503(self, health: Health) -> None:
        """An unhealthy daemon (503) fails the check."""
        health.status = 503
        assert self.run(health.port) != 0

    def test_fails_without_a_listener(self, health: Health) -> None:
        """No daemon listening fails the check."""
        port = health.port
        health.server.shutdown()
        health.server.server_close()
        assert self.run(port) != 0


# --- the Kubernetes manifests ---------------------------------------------------------


def documents(name: str) -> list[dict[str, Any]]:
    with (MANIFESTS / name).open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


class Workload:
    """One manifest file: its workload's pod, its two containers and its ConfigMap."""

    def __init__(self, name: str) -> None:
        self.docs = documents(name)
        [self.workload] = [doc for doc in self.docs if doc["kind"] in ("Deployment", "Job")]
        self.template = self.workload["spec"]["template"]
        self.pod = self.template["spec"]
        [self.sidecar] = self.pod["initContainers"]
        [self.app] = self.pod["containers"]
        self.volumes = {volume["name"]: volume for volume in self.pod["volumes"]}

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        return {item["name"]: item["value"] for item in container.get("env", [])}

    def mounts(self, container: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {mount["name"]: mount for mount in container.get("volumeMounts", [])}

    def mount_of(self, container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
        """The volume and the path inside it that hold `path` in this container."""
        best: dict[str, Any] | None = None
        for mount in container.get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix) and (
                best is None or len(mount["mountPath"]) > len(best["mountPath"])
            ):
                best = mount
        assert best is not None, f"{path} is on no volume of {container['name']}"
        return best, path[len(best["mountPath"].rstrip("/")) + 1 :]

    def config_path(self) -> str:
        return self.env(self.sidecar).get("CREDFRESH_CONFIG", env_of()["CREDFRESH_CONFIG"])

    def config_map(self) -> dict[str, Any]:
        mount, key = self.mount_of(self.sidecar, self.config_path())
        name = self.volumes[mount["name"]]["configMap"]["name"]
        [config_map] = [
            doc for doc in of_kind(self.docs, "ConfigMap") if doc["metadata"]["name"] == name
        ]
        assert key in config_map["data"]
        return config_map

    def document(self) -> dict[str, Any]:
        _, key = self.mount_of(self.sidecar, self.config_path())
        loaded = yaml.safe_load(self.config_map()["data"][key])
        assert isinstance(loaded, dict)
        return loaded

    def run_as(self, container: dict[str, Any], key: str) -> Any:
        """A securityContext field as it applies: the container's, else the pod's."""
        own = container.get("securityContext", {})
        return own.get(key, self.pod.get("securityContext", {}).get(key))


@pytest.fixture(params=WORKLOADS)
def workload(request: pytest.FixtureRequest) -> Workload:
    return Workload(request.param)


class TestManifests:
    def test_kinds(self) -> None:
        """deployment.yaml holds a Deployment and job.yaml a Job, each with its ConfigMap."""
        assert [d["kind"] for d in documents("deployment.yaml")].count("Deployment") == 1
        assert [d["kind"] for d in documents("job.yaml")].count("Job") == 1
        for name in WORKLOADS:
            assert of_kind(documents(name), "ConfigMap")

    def test_native_sidecar_with_startup_probe(self, workload: Workload) -> None:
        """credfresh is an init container with restartPolicy Always whose startupProbe GETs
        /readyz on the port the config listens on, so the app starts with credentials."""
        sidecar = workload.sidecar
        assert sidecar["restartPolicy"] == "Always"
        _, port = parse_listen(workload.document()["http"]["listen"])
        probe = sidecar["startupProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == ("/readyz", port)
        live = sidecar["livenessProbe"]["httpGet"]
        assert (live["path"], live["port"]) == ("/healthz", port)
        assert workload.document()["http"]["listen"] == "[::]:9464"

    def test_job_can_complete(self) -> None:
        """The Job's pod does not restart forever: restartPolicy Never (the sidecar stops
        with the app because it is a native sidecar)."""
        job = Workload("job.yaml")
        assert job.pod["restartPolicy"] in ("Never", "OnFailure")
        assert "restartPolicy" not in job.app

    def test_credentials_shared_as_a_directory(self, workload: Workload) -> None:
        """One emptyDir holds the credentials file in both containers, mounted as the
        directory (no subPath), where the config writes it and where the app reads it."""
        document = workload.document()
        written, name_in_volume = workload.mount_of(workload.sidecar, document["credentials_file"])
        read_path = workload.env(workload.app)["AWS_SHARED_CREDENTIALS_FILE"]
        read, name_read = workload.mount_of(workload.app, read_path)
        assert written["name"] == read["name"]
        assert name_in_volume == name_read == "credentials"
        assert "emptyDir" in workload.volumes[written["name"]]
        for container in (workload.sidecar, workload.app):
            for mount in container.get("volumeMounts", []):
                assert "subPath" not in mount
                assert "subPathExpr" not in mount
        assert not written.get("readOnly", False)

    def test_app_profile_exists(self, workload: Workload) -> None:
        """The app's AWS_PROFILE is a profile credfresh keeps fresh."""
        profile = workload.env(workload.app)["AWS_PROFILE"]
        assert profile in workload.document()["profiles"]

    def test_same_user_in_both_containers(self, workload: Workload) -> None:
        """Both containers run as the image's uid (the file is 0600), never as root."""
        image_uid = int(one("USER").partition(":")[0])
        for container in (workload.sidecar, workload.app):
            assert workload.run_as(container, "runAsUser") == image_uid
            assert workload.run_as(container, "runAsNonRoot") is True

    def test_hardened_containers(self, workload: Workload) -> None:
        """Read-only root, no privilege escalation, every capability dropped."""
        for container in (workload.sidecar, workload.app):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]

    def test_writable_paths_are_volumes(self, workload: Workload) -> None:
        """With a read-only root, the credentials and state directories are mounted volumes."""
        document = workload.document()
        for path in (document["credentials_file"], document["state_file"]):
            mount, _ = workload.mount_of(workload.sidecar, path)
            assert not mount.get("readOnly", False)
            assert "emptyDir" in workload.volumes[mount["name"]]

    def test_config_from_a_configmap_directory(self, workload: Workload) -> None:
        """The config is a ConfigMap mounted as a directory; CREDFRESH_CONFIG names its key."""
        mount, key = workload.mount_of(workload.sidecar, workload.config_path())
        assert "configMap" in workload.volumes[mount["name"]]
        assert "subPath" not in mount
        assert "/" not in key
        assert workload.config_map()["data"][key]

    def test_embedded_config_validates(self, workload: Workload) -> None:
        """The ConfigMap's config passes credfresh's full validation (build_config)."""
        config = build_config(
            workload.document(), Path(workload.config_path()), environ={}, home=Path.home()
        )
        assert config.http.listen == "[::]:9464"
        assert str(config.credentials_file) == workload.document()["credentials_file"]
        for profile in config.profiles.values():
            assert str(profile.web_identity_token_file) == IRSA_TOKEN

    def test_irsa_token_only_in_credfresh(self, workload: Workload) -> None:
        """The projected service-account token (audience sts.amazonaws.com) is mounted where
        the profile's web_identity_token_file points, in credfresh only."""
        mount, path = workload.mount_of(workload.sidecar, IRSA_TOKEN)
        volume = workload.volumes[mount["name"]]
        [source] = volume["projected"]["sources"]
        token = source["serviceAccountToken"]
        assert token["audience"] == "sts.amazonaws.com"
        assert token["path"] == path
        assert mount["name"] not in workload.mounts(workload.app)

    def test_app_skipped_by_the_identity_webhook(self, workload: Workload) -> None:
        """The pod annotation keeps the EKS webhook's web-identity env out of the app, so its
        SDK reads the credentials file instead."""
        annotations = workload.template["metadata"]["annotations"]
        skipped = {
            name.strip() for name in annotations["eks.amazonaws.com/skip-containers"].split(",")
        }
        assert workload.app["name"] in skipped
        assert workload.sidecar["name"] not in skipped
        assert "AWS_WEB_IDENTITY_TOKEN_FILE" not in workload.env(workload.app)
        assert "AWS_ROLE_ARN" not in workload.env(workload.app)

    def test_app_never_falls_back_to_the_node_role(self, workload: Workload) -> None:
        """Without IMDS, an SDK that cannot read the file fails instead of quietly using the
        node's instance role; credfresh itself needs no IMDS (IRSA's token, not the node)."""
        assert workload.env(workload.app)["AWS_EC2_METADATA_DISABLED"] == "true"

    def test_image_environment_matches(self, workload: Workload) -> None:
        """JSON logs and the config path agree with the image's defaults."""
        env = workload.env(workload.sidecar)
        assert env.get("CREDFRESH_LOG_FORMAT", env_of()["CREDFRESH_LOG_FORMAT"]) == "json"
        assert workload.sidecar.get("args", ["run"]) == ["run"]


class TestExecJob:
    """job-exec.yaml: one container running its program under `credfresh exec`."""

    NAME = "job-exec.yaml"

    def pod(self) -> tuple[dict[str, Any], dict[str, Any]]:
        docs = documents(self.NAME)
        [job] = of_kind(docs, "Job")
        return job["spec"]["template"], job["spec"]["template"]["spec"]

    def test_one_container_whose_args_parse_as_exec(self) -> None:
        """No sidecar; the args are `exec --profile P ... -- CMD` as credfresh's parser reads
        them, P a profile of the embedded config, which validates."""
        from credfresh.cli import build_parser
        from credfresh.commands.exec_rules import command_of
        from credfresh.context import Context

        template, pod = self.pod()
        assert "initContainers" not in pod
        assert pod["restartPolicy"] == "Never"
        [container] = pod["containers"]
        assert container["command"] == ["credfresh"]
        args = build_parser(Context.system(environ={})).parse_args(container["args"])
        assert args.command == "exec"
        assert command_of(args.argv) == ["python", "/app/export.py", "--all"]
        env = {item["name"]: item["value"] for item in container["env"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        config_dir, key = env["CREDFRESH_CONFIG"].rsplit("/", 1)
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        name = volumes[mounts[config_dir]["name"]]["configMap"]["name"]
        [config_map] = [
            d for d in of_kind(documents(self.NAME), "ConfigMap") if d["metadata"]["name"] == name
        ]
        document = yaml.safe_load(config_map["data"][key])
        config = build_config(document, Path(env["CREDFRESH_CONFIG"]), environ={}, home=Path("/"))
        assert set(args.profile) <= set(config.profiles)
        for profile in config.profiles.values():
            assert str(profile.web_identity_token_file) == IRSA_TOKEN
        assert str(Path(IRSA_TOKEN).parent) in mounts
        assert "AWS_PROFILE" not in env
        assert (
            template["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"]
            == (container["name"])
        )

    def test_hardened_with_a_memory_tmpdir(self) -> None:
        """Read-only root, no capabilities, a non-root uid; the token's TMPDIR is a memory
        emptyDir."""
        _, pod = self.pod()
        [container] = pod["containers"]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == int(one("USER").partition(":")[0])
        env = {item["name"]: item["value"] for item in container["env"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        tmp = volumes[mounts[env["TMPDIR"]]["name"]]
        assert tmp["emptyDir"]["medium"] == "Memory"
        assert not mounts[env["TMPDIR"]].get("readOnly", False)
