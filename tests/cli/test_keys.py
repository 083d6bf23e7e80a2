"""`atalaya keys`: a key is printed once and works; listings show neither keys nor
hashes; revoking one makes it fail; the file comes from --file or the gateway's
environment variable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli.__main__ import main
from services.cli.keys import FILE_ENV
from services.common.api_keys import ApiKeyStore


def test_create_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    args = ["keys", "--file", str(path), "create", "--tenant", "acme", "--user", "bot",
            "--scope", "atalaya:on-behalf-of", "--scope", "chat", "--name", "ingest"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("atk_") and "\n" not in key
    record, reason = ApiKeyStore(path).verify(key)
    assert record is not None and reason == ""
    assert (record.tenant, record.user, record.scopes, record.name) == (
        "acme", "bot", ("atalaya:on-behalf-of", "chat"), "ingest",
    )  # fmt: skip
    assert record.id in out.err

    assert main(["keys", "--file", str(path), "list"]) == 0
    table = capsys.readouterr().out
    assert record.id in table and "ingest" in table and "atalaya:on-behalf-of chat" in table
    assert key not in table and record.sha256 not in table
    assert main(["keys", "--file", str(path), "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [record.public()] and "sha256" not in rows[0]

    assert main(["keys", "--file", str(path), "revoke", record.id]) == 0
    assert ApiKeyStore(path).verify(key) == (None, "revoked")
    assert main(["keys", "--file", str(path), "revoke", "000000000000"]) == 1


def test_the_file_comes_from_the_gateways_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(FILE_ENV, raising=False)
    assert main(["keys", "list"]) == 2
    assert FILE_ENV in capsys.readouterr().err
    monkeypatch.setenv(FILE_ENV, str(tmp_path / "k.json"))
    assert main(["keys", "create", "--tenant", "acme", "--name", "n"]) == 0
    assert len(ApiKeyStore(tmp_path / "k.json").records()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["create", "--name", "n"],  # no tenant
        ["create", "--tenant", "", "--name", "n"],
        ["create", "--tenant", "acme", "--name", "n", "--scope", "two words"],
        ["create", "--tenant", "acme"],  # no name
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["keys", "--file", str(tmp_path / "k.json"), *args])
    assert caught.value.code == 2
    assert not (tmp_path / "k.json").exists()


def test_an_unreadable_file_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.json"
    path.write_text("nonsense")
    assert main(["keys", "--file", str(path), "list"]) == 1
    assert "cannot read" in capsys.readouterr().err
