"""The trust rule: which files and directories a root daemon may let steer it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from credfresh import trust
from credfresh.config.validate import load_config
from credfresh.process.daemon import check_config_permissions

NOBODY = 65534


def fake(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 0, 0, 0, 0))


DIR = stat.S_IFDIR
FILE = stat.S_IFREG


class TestDirectoryProblem:
    def test_root_owned_not_writable_passes(self) -> None:
        """A root-owned 0755 directory is trusted."""
        assert (
            trust.directory_problem("/d", fake(DIR | 0o755), fake(FILE | 0o600), 0, own=True)
            is None
        )

    def test_other_owner_names_the_fix(self) -> None:
        """A directory of another uid is refused with the chown that fixes it."""
        found = trust.directory_problem("/d", fake(DIR | 0o755, 1000), None, 0, own=False)
        assert found is not None
        assert "uid 1000" in found
        assert "chown root /d" in found

    @pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
    def test_group_or_other_writable(self, mode: int) -> None:
        """Group or other write on a plain directory is refused with `chmod go-w`."""
        found = trust.directory_problem("/d", fake(DIR | mode), fake(FILE | 0o600), 0, own=False)
        assert found is not None
        assert "chmod go-w /d" in found

    def test_sticky_with_root_owned_next_passes(self) -> None:
        """/tmp-like: others cannot rename the root-owned entry below, so it is trusted."""
        assert (
            trust.directory_problem("/tmp", fake(DIR | 0o1777), fake(DIR | 0o700), 0, own=False)
            is None
        )

    def test_sticky_with_foreign_next_fails(self) -> None:
        """A sticky directory does not protect an entry another user owns."""
        found = trust.directory_problem(
            "/tmp", fake(DIR | 0o1777), fake(DIR | 0o700, NOBODY), 0, own=False
        )
        assert found is not None

    def test_sticky_with_missing_next_fails(self) -> None:
        """Anyone may create the missing entry in a sticky directory."""
        assert trust.directory_problem("/tmp", fake(DIR | 0o1777), None, 0, own=False) is not None

    def test_sticky_is_never_a_files_own_directory(self) -> None:
        """A world-writable directory is never accepted as the file's own directory."""
        found = trust.directory_problem("/tmp", fake(DIR | 0o1777), fake(FILE | 0o600), 0, own=True)
        assert found is not None

    def test_own_uid_is_trusted(self) -> None:
        """A per-user daemon trusts its own directories."""
        assert trust.directory_problem("/h", fake(DIR | 0o700, 1000), None, 1000, own=True) is None


class TestFileProblem:
    def test_clean(self) -> None:
        """Root-owned 0644 is fine for a file that holds no secret."""
        assert trust.file_problem("/f", fake(FILE | 0o644), 0) is None

    def test_writable(self) -> None:
        """Group-writable: refused with `chmod go-w`."""
        assert "chmod go-w /f" in (trust.file_problem("/f", fake(FILE | 0o664), 0) or "")

    def test_other_owner(self) -> None:
        """Another owner: refused with the chown."""
        assert "chown 0 /f" in (trust.file_problem("/f", fake(FILE | 0o600, NOBODY), 0) or "")

    def test_secret_readable_by_others(self) -> None:
        """A secret readable by others is refused with `chmod o-r`; group-readable is not."""
        assert "chmod o-r /t" in (trust.secret_file_problem("/t", fake(FILE | 0o644)) or "")
        assert trust.secret_file_problem("/t", fake(FILE | 0o640)) is None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root-owned 0755 directory; its ancestors (pytest's under /tmp) pass the rule."""
    base = tmp_path / "tree"
    base.mkdir(mode=0o755)
    assert trust.path_problems(base, 0) == []
    return base


def write(path: Path, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    path.chmod(mode)
    return path


class TestPathProblems:
    def test_clean_tree(self, root: Path) -> None:
        """A root-owned file in root-owned directories has no problem."""
        assert trust.path_problems(write(root / "a" / "config.yaml"), 0) == []

    def test_missing_file_in_safe_directory(self, root: Path) -> None:
        """A missing file is the reader's business, not a trust problem."""
        assert trust.path_problems(root / "missing.yaml", 0) == []

    def test_missing_file_in_writable_directory(self, root: Path) -> None:
        """Where others could create the missing file, it is a problem."""
        (root / "open").mkdir()
        (root / "open").chmod(0o777)
        assert any(str(root / "open") in p for p in trust.path_problems(root / "open" / "x", 0))

    def test_every_ancestor_is_checked(self, root: Path) -> None:
        """A writable grandparent lets its owner swap the whole directory: named with the fix."""
        config = write(root / "a" / "b" / "config.yaml")
        (root / "a").chmod(0o777)
        problems = trust.path_problems(config, 0)
        assert problems == [
            f"directory {root / 'a'} is writable by group or others: run `chmod go-w {root / 'a'}`"
            " or move the file to a directory only root can write"
        ]

    def test_ancestor_of_another_user(self, root: Path) -> None:
        """An ancestor owned by another uid is refused even at 0755."""
        config = write(root / "a" / "config.yaml")
        os.chown(root / "a", NOBODY, NOBODY)
        assert any(
            "uid 65534" in p and f"chown root {root / 'a'}" in p
            for p in trust.path_problems(config, 0)
        )

    def test_file_itself(self, root: Path) -> None:
        """The file's own mode and owner count too."""
        config = write(root / "config.yaml", 0o666)
        assert trust.path_problems(config, 0) == [
            f"{config} is writable by group or others: run `chmod go-w {config}`"
        ]

    def test_sticky_directory_exception(self, root: Path) -> None:
        """In a sticky directory a root-owned subdirectory is safe, a file directly inside or
        a subdirectory of another user is not."""
        sticky = root / "sticky"
        sticky.mkdir()
        sticky.chmod(0o1777)
        assert trust.path_problems(write(sticky / "safe" / "config.yaml"), 0) == []
        assert any(str(sticky) in p for p in trust.path_problems(write(sticky / "direct.yaml"), 0))
        foreign = write(sticky / "theirs" / "config.yaml")
        os.chown(sticky / "theirs", NOBODY, NOBODY)
        assert trust.path_problems(foreign, 0)

    def test_symlink_of_another_user(self, root: Path) -> None:
        """A link another user owns chooses the target: refused, naming the link."""
        target = write(root / "real.yaml")
        link = root / "config.yaml"
        link.symlink_to(target)
        os.lchown(link, NOBODY, NOBODY)
        problems = trust.path_problems(link, 0)
        assert len(problems) == 1
        assert str(link) in problems[0]
        assert "symlink" in problems[0]

    def test_directory_holding_a_link_is_checked(self, root: Path) -> None:
        """A root-owned link in a directory others can write can be re-pointed: refused."""
        target = write(root / "safe" / "real.yaml")
        (root / "open").mkdir()
        (root / "open").chmod(0o777)
        (root / "open" / "config.yaml").symlink_to(target)
        assert any(
            str(root / "open") in p for p in trust.path_problems(root / "open" / "config.yaml", 0)
        )

    def test_link_target_directories_are_checked(self, root: Path) -> None:
        """A safe link to a file in a writable directory is refused (the target's directory)."""
        (root / "open").mkdir()
        (root / "open").chmod(0o777)
        target = write(root / "open" / "real.yaml")
        (root / "config.yaml").symlink_to(os.path.relpath(target, root))
        assert any(str(root / "open") in p for p in trust.path_problems(root / "config.yaml", 0))

    def test_kubernetes_configmap_layout(self, root: Path) -> None:
        """`config -> ..data/config`, `..data -> ..v1` in a sticky mount: all root's, trusted."""
        mount = root / "mount"
        mount.mkdir()
        mount.chmod(0o1777)
        write(mount / "..v1" / "config.yaml")
        (mount / "..v1").chmod(0o755)
        (mount / "..data").symlink_to("..v1")
        (mount / "config.yaml").symlink_to("..data/config.yaml")
        assert trust.path_problems(mount / "config.yaml", 0) == []

    def test_symlink_loop(self, root: Path) -> None:
        """A loop ends with a problem, not a hang."""
        (root / "a").symlink_to("b")
        (root / "b").symlink_to("a")
        assert any("too many levels" in p for p in trust.path_problems(root / "a", 0))


class TestTokenFile:
    def test_secret_layout_inside_its_directory(self, root: Path) -> None:
        """A Secret's `token -> ..data/token` stays inside its directory: followed."""
        write(root / "..v1" / "token")
        (root / "..data").symlink_to("..v1")
        (root / "token").symlink_to("..data/token")
        assert trust.link_escape(root / "token") is None
        assert trust.token_file_problems(root / "token", 0) == []

    @pytest.mark.parametrize("target", ["/etc/hostname", "../outside/token"])
    def test_link_out_of_its_directory(self, root: Path, target: str) -> None:
        """A link to a file outside the token file's directory is refused."""
        write(root / "outside" / "token")
        (root / "d").mkdir()
        (root / "d" / "token").symlink_to(target)
        problems = trust.token_file_problems(root / "d" / "token", 0)
        assert any("outside its directory" in p for p in problems)

    def test_readable_by_others(self, root: Path) -> None:
        """A token file others can read is refused with `chmod o-r`."""
        token = write(root / "token", 0o644)
        assert trust.token_file_problems(token, 0) == [
            f"{token} is readable by others: run `chmod o-r {token}`"
        ]


class TestCommandProblems:
    def test_absolute_program(self, root: Path) -> None:
        """An other-writable program is refused; a root-owned 0755 one passes."""
        program = write(root / "bin" / "page", 0o755)
        assert trust.command_problems(str(program), "", 0) == []
        program.chmod(0o757)
        assert trust.command_problems(str(program), "", 0)

    def test_bare_name_checks_the_path_searched(self, root: Path) -> None:
        """For a bare name, a writable PATH directory searched before the program is refused."""
        write(root / "bin" / "page", 0o755)
        (root / "open").mkdir()
        (root / "open").chmod(0o777)
        assert trust.command_problems("page", str(root / "bin"), 0) == []
        problems = trust.command_problems("page", f"{root / 'open'}:{root / 'bin'}", 0)
        assert any(str(root / "open") in p for p in problems)


def test_check_config_permissions_covers_every_file(root: Path) -> None:
    """Policy file, web-identity token, container token and alert program: each is judged."""
    policy = write(root / "policy.json", 0o666)
    policy.write_text('{"Version": "2012-10-17", "Statement": []}')
    web = write(root / "web-token", 0o600)
    os.chown(web, NOBODY, NOBODY)
    token = write(root / "token", 0o644)
    program = write(root / "page", 0o775)
    arn = "arn:aws:iam::123456789012:role/r"
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "credentials_file": str(root / "credentials"),
                "state_file": str(root / "state.json"),
                "alerts": {"command": [str(program)]},
                "container_credentials": {"listen": "127.0.0.1:0", "token_file": str(token)},
                "profiles": {
                    "p": {"role_arn": arn, "policy_file": str(policy), "region": "us-east-1"},
                    "w": {"role_arn": arn, "web_identity_token_file": str(web)},
                },
            }
        )
    )
    config.chmod(0o600)
    problems = check_config_permissions(
        load_config(config, {}, Path.home()), 0, {"PATH": "/usr/bin"}
    )
    assert problems == [
        f"{policy} is writable by group or others: run `chmod go-w {policy}`",
        f"{web} is owned by uid {NOBODY}, not by uid 0: run `chown 0 {web}`",
        f"{token} is readable by others: run `chmod o-r {token}`",
        f"{program} is writable by group or others: run `chmod go-w {program}`",
    ]
