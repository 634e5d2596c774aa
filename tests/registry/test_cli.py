"""`meshconnect offsets|leases|registry` against both stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from runtime.cli import main
from runtime.record import partition_key
from runtime.registry import Lease, Registry
from runtime.registry.file import FileRegistry
from runtime.registry.redis import RedisRegistry
from tests.servers import RedisServer

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[list[str], Callable[[], Registry]]:
    """The CLI options naming a fresh store, and a factory for the same store in-process."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"cli-{uuid.uuid4().hex[:8]}"
        return ["--redis-url", server.url, "--prefix", prefix], lambda: RedisRegistry(server.url, prefix=prefix)
    state = tmp_path / "state"
    return ["--state-dir", str(state)], lambda: FileRegistry(state)


@pytest.fixture
def run(store: tuple[list[str], Callable[[], Registry]], capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*argv: str) -> tuple[int, str, str]:
        status = main([argv[0], argv[1], *store[0], *argv[2:]])
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


def in_store(store: tuple[list[str], Callable[[], Registry]], work: Callable[[Registry], object]) -> object:
    async def go() -> object:
        registry = store[1]()
        try:
            return await work(registry)  # type: ignore[misc]
        finally:
            await registry.close()

    return asyncio.run(go())


def test_set_show_export_import_reset(run: Run, tmp_path: Path) -> None:
    assert run("offsets", "set", "orders", '{"table": "orders"}', '{"pos": 42}', "--create")[0] == 0
    assert run("offsets", "set", "orders", '{"table": "items"}', '{"pos": 7}')[0] == 0
    status, out, _ = run("offsets", "show", "orders")
    assert status == 0
    shown = orjson.loads(out)
    assert shown == {partition_key({"table": "orders"}): {"pos": 42}, partition_key({"table": "items"}): {"pos": 7}}

    export = tmp_path / "orders.json"
    assert run("offsets", "export", "orders", "--out", str(export))[0] == 0
    assert run("offsets", "reset", "orders", "--partition", '{"table": "items"}')[0] == 0
    assert orjson.loads(run("offsets", "show", "orders")[1]) == {partition_key({"table": "orders"}): {"pos": 42}}
    assert run("offsets", "reset", "orders")[0] == 0
    assert orjson.loads(run("offsets", "show", "orders")[1]) == {}
    assert run("offsets", "import", "orders", str(export))[0] == 0
    assert orjson.loads(run("offsets", "show", "orders")[1]) == shown


def test_writes_refuse_while_a_replica_holds_a_lease(
    run: Run, store: tuple[list[str], Callable[[], Registry]], tmp_path: Path
) -> None:
    lease = in_store(store, lambda registry: registry.try_acquire("orders", "g0", "replica-1", 60))
    assert isinstance(lease, Lease)
    in_store(store, lambda registry: registry.commit_offsets("orders", {"p": {"n": 5}}, lease))
    export = tmp_path / "orders.json"
    export.write_text('{"offsets": {"p": {"n": 1}}}')

    for argv in (
        ("offsets", "set", "orders", "p", '{"n": 0}'),
        ("offsets", "reset", "orders"),
        ("offsets", "import", "orders", str(export)),
        ("registry", "delete", "orders"),
    ):
        status, _, err = run(*argv)
        assert status == 1, argv
        assert "refused" in err and "g0" in err
    assert orjson.loads(run("offsets", "show", "orders")[1]) == {"p": {"n": 5}}

    status, out, _ = run("leases", "show", "orders")
    assert status == 0
    assert "replica-1" in out and "g0" in out

    assert run("offsets", "set", "orders", "p", '{"n": 0}', "--force")[0] == 0
    assert orjson.loads(run("offsets", "show", "orders")[1]) == {"p": {"n": 0}}


def test_connectors_are_listed_and_deleted(run: Run) -> None:
    run("offsets", "set", "orders", "p", '{"n": 1}', "--create")
    run("offsets", "set", "payments", "p", '{"n": 1}', "--create")
    status, out, _ = run("registry", "connectors")
    assert status == 0 and out.split() == ["orders", "payments"]
    status, out, _ = run("registry", "delete", "orders")
    assert status == 0 and "deleted orders" in out
    assert run("registry", "connectors")[1].split() == ["payments"]
    status, _, err = run("offsets", "show", "orders")
    assert status == 2 and "knows no connector 'orders'" in err


def test_a_name_the_store_does_not_know_is_refused_with_the_names_it_does(
    run: Run, store: tuple[list[str], Callable[[], Registry]], tmp_path: Path
) -> None:
    # A running replica of the instance "orders-from-mysql" (connector type mysql-source) with a checkpoint.
    lease = in_store(store, lambda registry: registry.try_acquire("orders-from-mysql", "g0", "replica-1", 60))
    assert isinstance(lease, Lease)
    in_store(store, lambda registry: registry.commit_offsets("orders-from-mysql", {"p": {"n": 5}}, lease))
    export = tmp_path / "offsets.json"
    export.write_text('{"offsets": {"p": {"n": 1}}}')

    for argv in (
        ("offsets", "show", "mysql-source"),
        ("offsets", "export", "mysql-source"),
        ("offsets", "export", "mysql-source", "--out", str(tmp_path / "out.json")),
        ("offsets", "set", "mysql-source", "p", '{"n": 0}'),
        ("offsets", "reset", "mysql-source"),
        ("offsets", "reset", "mysql-source", "--partition", "p", "--force"),
        ("offsets", "import", "mysql-source", str(export)),
        ("leases", "show", "mysql-source"),
    ):
        status, out, err = run(*argv)
        assert status == 2, argv
        assert "knows no connector 'mysql-source'" in err and "orders-from-mysql" in err, (argv, err)
        assert "instance" in err and out == "", argv
    assert not (tmp_path / "out.json").exists()
    assert "--create" in run("offsets", "set", "mysql-source", "p", '{"n": 0}')[2]
    assert run("registry", "connectors")[1].split() == ["orders-from-mysql"], "nothing was written under the wrong name"
    assert orjson.loads(run("offsets", "show", "orders-from-mysql")[1]) == {"p": {"n": 5}}

    # --create is the deliberate way to start the offsets of a connector that has not run yet.
    assert run("offsets", "import", "new-one", str(export), "--create")[0] == 0
    assert run("registry", "connectors")[1].split() == ["new-one", "orders-from-mysql"]
    assert orjson.loads(run("offsets", "show", "new-one")[1]) == {"p": {"n": 1}}


def test_an_empty_store_says_it_knows_no_connector(run: Run) -> None:
    status, _, err = run("leases", "show", "orders")
    assert status == 2 and "knows no connector 'orders'; it knows: (none)" in err


def test_bad_input_is_a_usage_error(run: Run) -> None:
    status, _, err = run("offsets", "set", "orders", "p", "not json", "--create")
    assert status == 2 and "OFFSET is not valid JSON" in err
    status, _, err = run("offsets", "show")
    assert status == 2 and "name the connector" in err


def test_the_store_and_connector_come_from_a_worker_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(f"name: orders\nconnector: file-source\nregistry: {{kind: file, path: {tmp_path / 'state'}}}\n")
    assert main(["offsets", "set", "--config", str(config), "orders", "p", '{"n": 3}', "--create"]) == 0
    capsys.readouterr()
    assert main(["offsets", "show", "--config", str(config)]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"p": {"n": 3}}
    assert main(["offsets", "show", "--config", str(config), "--state-dir", str(tmp_path)]) == 2
