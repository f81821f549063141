"""once, status and credential-process against the development STS over HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import botocore.config
import pytest
from botocore.configloader import raw_config_parse

import conftest
from conftest import Project
from credfresh.cli import main
from credfresh.config.validate import load_config
from credfresh.credfile import store as credfile
from credfresh.devsts import DevSTS
from credfresh.sources.assume_role import StsSource


def run(project: Project, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        [*args, "-c", str(project.config_path)], stdout=out, stderr=err, environ=project.env
    )
    return code, out.getvalue(), err.getvalue()


def managed(project: Project) -> dict[str, object]:
    return dict(credfile.read_managed(project.credentials_file, "test").managed)


class TestOnce:
    def test_refreshes_all_in_one_write(self, project: Project) -> None:
        """once fetches every missing profile and writes them together, keeping [base]."""
        for name in ("a", "b", "c"):
            project.profile(name)
        project.write_config()
        code, out, err = run(project, "once")
        assert code == 0, err
        assert set(managed(project)) == {"a", "b", "c"}
        parsed = raw_config_parse(str(project.credentials_file))
        assert parsed["base"]["aws_access_key_id"] == project.walkthrough.access_key_id
        assert project.credentials_file.read_text().startswith("# managed by hand\n[base]\n")
        assert project.sts.proxy.calls_by_action.get("AssumeRole") == 3
        assert out.count("refreshed") == 3

    def test_one_write_for_many_profiles(
        self, project: Project, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """once writes every refreshed profile in ONE write of the file."""
        writes: list[int] = []
        real = credfile.write_profiles

        def counting(*args: object, **kwargs: object) -> object:
            writes.append(len(args[2]))  # type: ignore[arg-type]
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(credfile, "write_profiles", counting)
        for i in range(12):
            project.profile(f"p{i}")
        project.write_config()
        assert run(project, "once")[0] == 0
        assert writes == [12]

    def test_fresh_profiles_cost_nothing(self, project: Project) -> None:
        """A second once makes no STS call; --force refreshes anyway."""
        project.profile("a")
        project.write_config()
        assert run(project, "once")[0] == 0
        calls = project.sts.proxy.calls
        code, out, _ = run(project, "once")
        assert code == 0
        assert project.sts.proxy.calls == calls
        assert "nothing to do" in out
        assert run(project, "once", "--force")[0] == 0
        assert project.sts.proxy.calls == calls + 1

    def test_every_parameter_reaches_sts(self, project: Project, tmp_path: Path) -> None:
        """Session name, duration, policy, policy ARNs, tags, external id, source identity."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        project.profile(
            "p",
            role_session_name="etl-job",
            duration_seconds=1800,
            external_id="ext-1234",
            policy=policy,
            policy_arns=["arn:aws:iam::aws:policy/ReadOnlyAccess"],
            tags={"team": "data"},
            transitive_tag_keys=["team"],
            source_identity="alice",
        )
        project.write_config()
        assert run(project, "once")[0] == 0
        (record,) = project.sts.proxy.requests(action="AssumeRole")
        params = record.params
        assert params["RoleArn"] == project.walkthrough.role_arn
        assert params["RoleSessionName"] == "etl-job"
        assert params["DurationSeconds"] == "1800"
        assert json.loads(params["Policy"]) == policy
        assert params["PolicyArns.member.1.arn"] == "arn:aws:iam::aws:policy/ReadOnlyAccess"
        assert params["Tags.member.1.Key"] == "team"
        assert params["Tags.member.1.Value"] == "data"
        assert params["TransitiveTagKeys.member.1"] == "team"
        assert params["ExternalId"] == "ext-1234"
        assert params["SourceIdentity"] == "alice"

    @pytest.mark.parametrize(
        ("code", "permanent", "hint"),
        [
            ("AccessDenied", True, "trust policy"),
            ("MalformedPolicyDocument", True, "session policy"),
            ("PackedPolicyTooLarge", True, "too large"),
            ("RegionDisabledException", True, "activate STS"),
            ("ExpiredToken", True, "expired"),
            ("InvalidClientTokenId", True, "access key"),
            ("SignatureDoesNotMatch", True, "secret key"),
            ("ValidationError", True, "out of range"),
            ("Throttling", False, "rate limiting"),
        ],
    )
    def test_error_codes(self, project: Project, code: str, permanent: bool, hint: str) -> None:
        """Each STS error is reported with its code, classification and hint; exit 1."""
        project.profile("p")
        project.profile("ok", role_session_name="fine")
        project.write_config()
        project.sts.proxy.fail(
            code, when=lambda r: r.params.get("RoleSessionName") == "credfresh-p"
        )
        status, _, err = run(project, "once")
        assert status == 1
        kind = "permanent" if permanent else "transient"
        assert f"failed p: {code} ({kind})" in err
        assert hint in err
        assert set(managed(project)) == {"ok"}

    def test_bad_config_exits_2(self, project: Project) -> None:
        """A config problem is exit 2."""
        project.profile("p", role_arn="nope")
        project.write_config()
        assert run(project, "once")[0] == 2

    def test_chaining(self, project: Project) -> None:
        """A chained profile is assumed with its source's fresh credentials, after it."""
        wt = project.walkthrough
        project.profile("src", role_session_name=wt.chain_session_name)
        project.profile("chained", role_arn=wt.chained_role_arn, source_profile="src")
        project.write_config()
        code, _, err = run(project, "once", "--profile", "chained")
        assert code == 0, err
        creds = managed(project)
        assert set(creds) == {"src", "chained"}
        chained = project.sts.proxy.requests(role_arn=wt.chained_role_arn)[0]
        assert chained.access_key_id == creds["src"].access_key_id  # type: ignore[attr-defined]

    def test_web_identity(self, project: Project, tmp_path: Path) -> None:
        """A web-identity profile calls AssumeRoleWithWebIdentity with the token file's content."""
        token = tmp_path / "token"
        token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl\n")
        document = project.document
        document["defaults"].pop("source_profile")
        project.profile(
            "irsa",
            role_arn=project.walkthrough.web_identity_role_arn,
            web_identity_token_file=str(token),
        )
        project.write_config()
        code, _, err = run(project, "once")
        assert code == 0, err
        assert project.sts.proxy.calls_by_action == {"AssumeRoleWithWebIdentity": 1}
        (record,) = project.sts.proxy.requests()
        assert "WebIdentityToken" not in record.params

    @pytest.mark.parametrize(
        ("body", "why"),
        [
            ("<html><body>Please log in to the hotel wifi</body></html>", "captive"),
            (
                "<AssumeRoleResponse><AssumeRoleResult><Credentials>"
                "<AccessKeyId>ASIAX</AccessKeyId></Credentials></AssumeRoleResult>"
                "</AssumeRoleResponse>",
                "missing",
            ),
        ],
    )
    def test_broken_answers_write_nothing(self, project: Project, body: str, why: str) -> None:
        """A broken STS answer is a failure and nothing is written."""
        project.profile("p")
        project.write_config()
        project.sts.proxy.respond_raw(200, body, "text/xml")
        code, _, err = run(project, "once")
        assert code == 1
        assert "failed p:" in err
        assert managed(project) == {}

    def test_clock_skew_corrects_expiry(self, project: Project) -> None:
        """With STS's clock 10 minutes ahead the written expiry is moved back by 10 minutes."""
        project.profile("p", duration_seconds=3600)
        project.write_config()
        project.sts.proxy.date_offset = 600
        assert run(project, "once")[0] == 0
        creds = managed(project)["p"]
        left = creds.expiration - datetime.now(UTC)  # type: ignore[attr-defined]
        assert timedelta(minutes=48) < left < timedelta(minutes=51)

    def test_conflict_section(self, project: Project) -> None:
        """A same-named section credfresh does not own fails with section_conflict."""
        with project.credentials_file.open("a") as handle:
            handle.write("[legacy]\naws_access_key_id = AKIAOLDOLDOLDOLDOLD1\n")
        project.profile("legacy")
        project.write_config()
        code, _, err = run(project, "once")
        assert code == 1
        assert "section_conflict" in err
        assert project.sts.proxy.calls == 0


class TestRotation:
    def test_rotated_source_keys_are_reread(self, project: Project, sts: DevSTS) -> None:
        """With IAM enforced, a deleted source key fails once and the rotated key is re-read."""
        import boto3 as boto

        from credfresh.devsts.walkthrough import SETUP_ACCESS_KEY_ID, SETUP_SECRET

        original = sts.walkthrough
        own = sts.setup_walkthrough(prefix="rotation")
        sts.walkthrough = original
        iam = boto.client(
            "iam",
            endpoint_url=sts.upstream_url,
            region_name="us-east-1",
            aws_access_key_id=SETUP_ACCESS_KEY_ID,
            aws_secret_access_key=SETUP_SECRET,
        )

        def use_key(key_id: str, secret: str) -> None:
            project.credentials_file.write_text(
                f"[base]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
            )

        use_key(own.access_key_id, own.secret_access_key)
        project.profile("p", role_arn=own.role_arn)
        project.write_config()
        config = load_config(project.config_path, project.env, Path.home())
        clients = StsSource(config.sts, credentials_file=str(project.credentials_file))
        sts.enable_auth()
        try:
            clients.fetch(config.profiles["p"])
            sts.disable_auth()
            new_key = iam.create_access_key(UserName=own.user_name)["AccessKey"]
            iam.delete_access_key(UserName=own.user_name, AccessKeyId=own.access_key_id)
            conftest.SECRETS[new_key["SecretAccessKey"]] = "the rotated source secret"
            use_key(new_key["AccessKeyId"], new_key["SecretAccessKey"])
            sts.enable_auth()
            issued = clients.fetch(config.profiles["p"])
        finally:
            sts.disable_auth()
        assert issued.credentials.access_key_id.startswith("ASIA")
        calls = project.sts.proxy.requests(action="AssumeRole")
        assert [c.access_key_id for c in calls] == [
            own.access_key_id,
            own.access_key_id,
            new_key["AccessKeyId"],
        ]
        assert calls[1].status == 403


class TestStatus:
    def test_status_and_min_remaining(self, project: Project) -> None:
        """status exits 0 while each profile has --min-remaining left, 1 otherwise."""
        project.profile("p", duration_seconds=900)
        project.write_config()
        code, out, _ = run(project, "status")
        assert code == 1
        assert "missing" in out
        assert run(project, "once")[0] == 0
        code, out, _ = run(project, "status")
        assert code == 0
        assert "fresh" in out
        assert run(project, "status", "--min-remaining", "10m")[0] == 0
        assert run(project, "status", "--min-remaining", "20m")[0] == 1
        code, out, _ = run(project, "status", "--json")
        (row,) = json.loads(out)["profiles"]
        assert row["state"] == "fresh"
        assert row["role_arn"] == project.walkthrough.role_arn

    def test_rows_carry_refresh_at_and_the_table_a_refresh_column(self) -> None:
        """refresh_at is the due time of what is on disk; REFRESH counts down to it, then `now`."""
        from credfresh.commands import status
        from credfresh.credentials import Credentials

        issued = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
        long = Credentials("ASIAEXAMPLEEXAMPLE01", "s", "t", issued + timedelta(hours=12), issued)
        short = Credentials("ASIAEXAMPLEEXAMPLE02", "s", "t", issued + timedelta(hours=1), issued)
        profiles = {"long": ("arn-l", None), "short": ("arn-s", 600.0), "none": ("arn-n", None)}
        now = issued + timedelta(minutes=55)
        rows = status.status_rows(now, profiles, {"long": long, "short": short}, frozenset(), {})
        by_name = {row["profile"]: row for row in rows}
        assert by_name["long"]["refresh_at"] == "2026-11-28T22:55:00Z"
        assert by_name["short"]["refresh_at"] == "2026-11-28T12:50:00Z"
        assert by_name["short"]["state"] == "due"
        assert by_name["none"]["refresh_at"] is None
        table = status.render_table(rows, now).splitlines()
        assert table[0].split()[:6] == ["PROFILE", "STATE", "EXPIRES", "AT", "LEFT", "REFRESH"]
        cells = {line.split()[0]: line.split() for line in table[1:]}
        assert cells["long"][4] == "10h00m"
        assert cells["short"][4] == "now"
        assert cells["none"][4] == "-"

    def test_unknown_profile_is_usage_error(self, project: Project) -> None:
        """--profile naming no configured profile exits 2."""
        project.profile("p")
        project.write_config()
        assert run(project, "status", "--profile", "nope")[0] == 2


class TestCredentialProcess:
    def test_prints_json_or_fails(self, project: Project) -> None:
        """credential-process prints Version 1 JSON, or exits 1 when missing."""
        project.profile("p")
        project.write_config()
        code, _, err = run(project, "credential-process", "p")
        assert code == 1
        assert "no credentials" in err
        assert run(project, "once")[0] == 0
        code, out, _ = run(project, "credential-process", "p")
        assert code == 0
        data = json.loads(out)
        assert data["Version"] == 1
        assert set(data) == {
            "Version",
            "AccessKeyId",
            "SecretAccessKey",
            "SessionToken",
            "Expiration",
            "AccountId",
        }
        assert data["AccountId"].isdigit()
        assert len(data["AccountId"]) == 12

    def test_boto3_uses_the_recipe(self, project: Project, sts: DevSTS) -> None:
        """A boto3 Session on the credential_process recipe calls GetCallerIdentity."""
        project.profile("app")
        project.write_config()
        assert run(project, "once")[0] == 0
        aws_config = Path(project.env["AWS_CONFIG_FILE"])
        command = f"{sys.executable} -m credfresh credential-process app -c {project.config_path}"
        aws_config.write_text(f"[profile app-live]\ncredential_process = {command}\n")
        session = boto3.Session(profile_name="app-live", region_name="us-east-1")
        client = session.client(
            "sts",
            endpoint_url=sts.url,
            config=botocore.config.Config(retries={"total_max_attempts": 1}),
        )
        identity = client.get_caller_identity()
        assert ":assumed-role/" in identity["Arn"]

    def test_imports_stay_light(self, project: Project) -> None:
        """credential-process and status load neither boto3 nor pydantic."""
        project.profile("p")
        project.write_config()
        code = (
            "import sys; from credfresh.cli import main; "
            f"main(['credential-process', 'p', '-c', {str(project.config_path)!r}]); "
            f"main(['status', '-c', {str(project.config_path)!r}]); "
            "bad = [m for m in ('boto3', 'botocore', 'pydantic') if m in sys.modules]; "
            "sys.stderr.write(repr(bad))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=project.env,
            check=False,
        )
        assert result.stderr.strip().endswith("[]"), result.stderr
