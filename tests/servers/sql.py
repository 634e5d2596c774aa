"""The SQL databases: MariaDB with its binlog for CDC, PostgreSQL with logical decoding."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

from tests.servers.process import ServerProcess, require_binary, wait_for_port

__all__ = ["MariaDBServer", "PostgresServer"]


class MariaDBServer(ServerProcess):
    """MariaDB with the binlog on in ROW format (for CDC) and root without password over TCP."""

    name = "mariadb"

    def __init__(self, server_id: int = 1) -> None:
        self.binary = require_binary("mariadbd", "/usr/sbin/mariadbd", "mysqld")
        self.install_db = require_binary("mariadb-install-db", "mysql_install_db")
        self.server_id = server_id
        super().__init__()
        self.socket = str(self.dir / "mysqld.sock")

    def prepare(self) -> None:
        subprocess.run(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={self.dir / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ],
            check=True,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def command(self) -> Sequence[str]:
        return [
            self.binary,
            "--no-defaults",
            f"--datadir={self.dir / 'data'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.dir / 'mysqld.pid'}",
            "--user=root",
            "--log-bin=mysql-bin",
            "--binlog-format=ROW",
            f"--server-id={self.server_id}",
            "--binlog-row-image=FULL",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=48M",
            "--max-connections=500",
            "--local-infile=1",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
        ]

    def ready(self) -> None:
        wait_for_port(self.port, timeout=60, proc=self.proc)

    def sql(self, statement: str, database: str | None = None) -> str:
        """Run ``statement`` with the mariadb client; returns tab-separated output."""
        client = require_binary("mariadb", "mysql")
        cmd = [client, "-uroot", "-h127.0.0.1", f"-P{self.port}", "-N", "-B", "-e", statement]
        if database:
            cmd.insert(1, f"-D{database}")
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


class PostgresServer(ServerProcess):
    """PostgreSQL with wal_level=logical, trust auth for the OS user running the tests."""

    name = "postgres"

    def __init__(self) -> None:
        self.initdb = require_binary("initdb", "/usr/lib/postgresql/15/bin/initdb")
        self.binary = require_binary("postgres", "/usr/lib/postgresql/15/bin/postgres")
        self.pg_isready = require_binary("pg_isready", "/usr/lib/postgresql/15/bin/pg_isready")
        super().__init__()
        self.user = "postgres"

    def as_user(self) -> Callable[[], None] | None:
        if os.geteuid() != 0:
            return None
        import pwd

        entry = pwd.getpwnam("postgres")

        def demote() -> None:
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

        return demote

    def prepare(self) -> None:
        demote = self.as_user()
        if demote is not None:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir / "server.log", "postgres", "postgres")
        else:
            self.user = getpass.getuser()
        subprocess.run(
            [self.initdb, "-D", str(self.dir / "data"), "-A", "trust", "-U", self.user],
            check=True,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=demote,
        )

    def command(self) -> Sequence[str]:
        return [
            self.binary,
            "-D",
            str(self.dir / "data"),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.dir}",
            "-c",
            "wal_level=logical",
            "-c",
            "fsync=off",
            "-c",
            "max_replication_slots=10",
            "-c",
            "max_wal_senders=10",
        ]

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
