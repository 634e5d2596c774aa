"""Schema changes of cdc events, parsed and rebuilt: the text of an event never runs as it came.

A change event's ``ddl`` is untrusted text. It is parsed with sqlglot (MySQL dialect) into one
statement, checked against an allow-list of statement kinds and of the parts they may hold, and
rebuilt from the tree with every table qualified into the sink's database (through ``table_map``).
Whatever is not on the lists is refused with a :class:`~runtime.errors.DataError` that names what
and why, so the event goes to the dead-letter topic:

* statements: ``CREATE [OR REPLACE] TABLE [IF NOT EXISTS]`` (columns, or ``LIKE`` a table of the
  database), ``ALTER TABLE`` (columns, indexes, keys, rename within the database, a few table
  options), ``DROP TABLE``, ``TRUNCATE``, ``RENAME TABLE``, ``CREATE INDEX`` and ``DROP INDEX``;
* a table may be named bare or qualified with the event's source database or the sink's own; any
  other database, the sink's versions table, a temporary table, a subquery, a variable, a stored
  or unknown function, an executable comment (``/*! ... */``) or a second statement is refused;
* the rebuilt statement must say every word the original said (bar a few spellings sqlglot
  normalises, like ``KEY`` for ``INDEX``): where sqlglot would drop part of a statement, the
  statement is refused instead of running with less than it asked for.

A statement on several tables (``DROP TABLE a, b``, ``RENAME TABLE a TO b, c TO d``) becomes one
step per table, so each table gets its own ordering marks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from runtime import DataError
from services.mysql.sql import check_identifier

__all__ = ["TableDdl", "rebuild_ddl"]

_DIALECT = sqlglot.Dialect.get_or_raise("mysql")
# Parsing takes about 10 ms per KiB: a longer text is no table a source emits (4,096 columns fit in less).
MAX_DDL_BYTES = 256 * 1024

# Every kind of node a permitted statement may contain; anything else in the tree refuses it.
_ALLOWED_NODES: frozenset[type[exp.Expression]] = frozenset(
    {
        # statements and their frame
        exp.Create, exp.Alter, exp.Drop, exp.TruncateTable, exp.Schema, exp.Table, exp.Identifier, exp.Var,
        # columns, types and column options
        exp.ColumnDef, exp.DataType, exp.DataTypeParam, exp.ColumnConstraint, exp.NotNullColumnConstraint,
        exp.DefaultColumnConstraint, exp.AutoIncrementColumnConstraint, exp.PrimaryKeyColumnConstraint,
        exp.UniqueColumnConstraint, exp.CommentColumnConstraint, exp.CharacterSetColumnConstraint,
        exp.CollateColumnConstraint, exp.CheckColumnConstraint, exp.ComputedColumnConstraint,
        exp.OnUpdateColumnConstraint, exp.ZeroFillColumnConstraint, exp.ColumnPosition,
        # keys and indexes
        exp.IndexColumnConstraint, exp.IndexConstraintOption, exp.Constraint, exp.PrimaryKey, exp.ForeignKey,
        exp.Reference, exp.Index, exp.IndexParameters, exp.Ordered, exp.ColumnPrefix,
        # ALTER TABLE actions
        exp.ModifyColumn, exp.RenameColumn, exp.AlterColumn, exp.AddConstraint, exp.AlterRename, exp.RenameIndex,
        exp.DropPrimaryKey,
        # table options that stay inside the table
        exp.Properties, exp.EngineProperty, exp.CharacterSetProperty, exp.CollateProperty, exp.AutoIncrementProperty,
        exp.SchemaCommentProperty, exp.RowFormatProperty, exp.AlgorithmProperty, exp.LockProperty, exp.LikeProperty,
        exp.OnProperty,
        # values and expressions of defaults, checks and generated columns (built-in functions too, see _check_node)
        exp.Column, exp.Literal, exp.Null, exp.Boolean, exp.BitString, exp.HexString, exp.Paren, exp.Neg, exp.Not,
        exp.And, exp.Or, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.IntDiv, exp.EQ, exp.NEQ, exp.GT, exp.GTE,
        exp.LT, exp.LTE, exp.Is, exp.In, exp.Between, exp.Like, exp.Tuple,
    }
)  # fmt: skip
# Functions sqlglot does not model that a MySQL/MariaDB table definition uses (MariaDB's JSON columns).
_ALLOWED_UNMODELLED_FUNCTIONS = frozenset({"JSON_VALID"})
# Engines that keep the table's rows in this server (CONNECT, FEDERATED, SPIDER ... reach other servers or files).
_ALLOWED_ENGINES = frozenset({"INNODB", "MYISAM", "ARIA", "MEMORY"})
_ALTER_DROPS = frozenset({"COLUMN", "INDEX", "FOREIGN KEY"})
# Words a rebuilt statement may lack: sqlglot writes INDEX for KEY, CHARACTER SET for CHARSET, RENAME for RENAME TO,
# GENERATED ALWAYS AS for AS.
_SPELLINGS = frozenset({"TO", "AS", "KEY", "CHARSET"})
_PUNCTUATION = frozenset(
    {TokenType.L_PAREN, TokenType.R_PAREN, TokenType.COMMA, TokenType.DOT, TokenType.EQ, TokenType.SEMICOLON}
)
_NAME_TOKENS = frozenset({TokenType.VAR, TokenType.IDENTIFIER})


@dataclass(frozen=True, slots=True)
class TableDdl:
    """One schema change to run: the rebuilt ``statement`` on target ``table``.

    ``resets``: CREATE, DROP, TRUNCATE (row changes from before it are obsolete); ``removes_rows``: of
    those, the ones that remove the rows of a table that exists (DROP, TRUNCATE, CREATE OR REPLACE).
    """

    statement: str
    table: str
    resets: bool
    removes_rows: bool


def rebuild_ddl(text: str, *, source_db: str, target_db: str, table_map: Mapping[str, str], reserved: str) -> list[TableDdl]:
    """The steps that apply ``text`` (DDL of ``source_db``) to ``target_db``; DataError when it is not allowed.

    ``table_map`` maps 'source_db.table' to a target table; ``reserved`` is a table of the sink's own no event may name.
    """
    rebuilder = _Rebuilder(text, source_db, target_db, table_map, reserved)
    if len(text.encode()) > MAX_DDL_BYTES:
        raise rebuilder.refuse(f"it is longer than {MAX_DDL_BYTES // 1024} KiB")
    try:
        return rebuilder.steps()
    except RecursionError as exc:  # sqlglot's parser and generator recurse per level of nesting
        raise rebuilder.refuse("it nests expressions too deeply") from exc


class _Rebuilder:
    def __init__(self, text: str, source_db: str, target_db: str, table_map: Mapping[str, str], reserved: str) -> None:
        self._text = text
        self._source_db = source_db
        self._target_db = target_db
        self._table_map = table_map
        self._reserved = reserved

    def refuse(self, why: str) -> DataError:
        # The event's text is not quoted: reasons are logged, and a statement may carry a password (CONNECTION='...').
        words = self._text.split(None, 2)[:2]
        kind = " ".join(words).upper() if all(word.isalpha() for word in words) and words else "statement"
        return DataError(f"schema change ({kind}) refused: {why}")

    def steps(self) -> list[TableDdl]:
        try:
            tokens = _DIALECT.tokenize(self._text)
        except SqlglotError as exc:
            raise self.refuse(f"it does not parse as MySQL ({_parse_failure(exc)})") from exc
        self._check_comments(tokens)
        if tokens and tokens[0].token_type == TokenType.RENAME:
            return self._rename(tokens)
        try:
            trees = [tree for tree in sqlglot.parse(self._text, read=_DIALECT) if tree is not None]
        except SqlglotError as exc:
            raise self.refuse(f"it does not parse as MySQL ({_parse_failure(exc)})") from exc
        if len(trees) != 1:
            raise self.refuse(f"an event carries exactly one statement, this one has {len(trees)}")
        tree = trees[0]
        for node in tree.walk():
            self._check_node(node)
        if isinstance(tree, exp.Create) and tree.kind == "TABLE":
            marked = tree.find(exp.Table)
            return [self._step(tree, marked, resets=True, removes_rows=bool(tree.args.get("replace")))]
        if isinstance(tree, exp.Create) and tree.kind == "INDEX":
            return [self._step(tree, tree.this.args.get("table"), resets=False, removes_rows=False)]
        if isinstance(tree, exp.Alter) and tree.kind == "TABLE":
            for action in tree.args.get("actions") or []:
                if isinstance(action, exp.Drop) and action.kind not in _ALTER_DROPS:
                    raise self.refuse(f"ALTER TABLE ... DROP {action.kind} is not applied (only columns, indexes, keys)")
            return [self._step(tree, tree.this, resets=False, removes_rows=False)]
        if isinstance(tree, exp.Drop) and tree.kind == "INDEX":
            on = tree.args.get("cluster")
            return [self._step(tree, on.this if isinstance(on, exp.OnProperty) else None, resets=False, removes_rows=False)]
        if isinstance(tree, exp.Drop) and tree.kind == "TABLE":
            if tree.args.get("temporary"):
                raise self.refuse("temporary tables are not replicated")
            self._rebuild(tree)
            # One statement per table, so each gets its own marks; CASCADE and RESTRICT do nothing in MySQL.
            exists = tree.args.get("exists")
            return [self._split(exp.Drop(kind="TABLE", exists=exists, tables=[table]), table) for table in tree.args["tables"]]
        if isinstance(tree, exp.TruncateTable):
            self._rebuild(tree)
            return [self._split(exp.TruncateTable(expressions=[table]), table) for table in tree.expressions]
        kind = tree.args.get("kind")
        raise self.refuse(
            f"{tree.key.upper()}{' ' + str(kind) if kind else ''} is not a schema change the sink applies"
            " (CREATE/ALTER/DROP/TRUNCATE/RENAME TABLE, CREATE/DROP INDEX)"
        )

    def _check_comments(self, tokens: list[Token]) -> None:
        """Comments are dropped from the rebuilt statement; executable ones are code to MySQL, so they refuse it."""
        for token in tokens:
            for comment in token.comments:
                if comment.lstrip().startswith(("!", "M!")):
                    raise self.refuse("it holds an executable comment (/*! ... */), which MySQL would run as code")

    def _check_node(self, node: exp.Expr) -> None:
        kind = type(node)
        if kind is exp.Anonymous:
            name = str(node.this).upper()
            if name not in _ALLOWED_UNMODELLED_FUNCTIONS:
                raise self.refuse(f"function {name}() is not a built-in the sink knows (stored or unknown functions are refused)")
        elif isinstance(node, exp.Func):
            pass  # a built-in sqlglot knows; its arguments are checked as nodes of their own (no subquery, no table)
        elif kind not in _ALLOWED_NODES:
            what = {
                exp.Select: "a SELECT",
                exp.Subquery: "a subquery",
                exp.Command: "syntax sqlglot cannot parse faithfully",
                exp.Parameter: "a variable",
                exp.TemporaryProperty: "a temporary table (not replicated)",
                exp.Property: "a table option that is not applied (e.g. CONNECTION, TABLE_TYPE)",
            }.get(kind, f"{node.key.upper()}, which the sink does not apply")
            raise self.refuse(f"it holds {what}")
        if isinstance(node, exp.Identifier):
            self._plain(node.name)
        elif isinstance(node, exp.Column) and (node.args.get("table") or node.args.get("db")):
            raise self.refuse(f"column {node.sql(dialect=_DIALECT)} names another table")
        elif isinstance(node, exp.EngineProperty) and node.name.upper() not in _ALLOWED_ENGINES:
            raise self.refuse(f"ENGINE={node.name} is not applied (only {', '.join(sorted(_ALLOWED_ENGINES))})")

    def _plain(self, name: str) -> str:
        try:
            return check_identifier(name)
        except DataError as exc:
            raise self.refuse(exc.reason) from exc

    def _target(self, table: exp.Table) -> str:
        """Qualify ``table`` into the sink's database in place; returns its target name."""
        if table.args.get("catalog"):
            raise self.refuse(f"{table.sql(dialect=_DIALECT)} is not a table name")
        db = table.args.get("db")
        name = self._plain(table.name)
        if db is not None and db.name not in {self._source_db, self._target_db}:
            raise self.refuse(
                f"it names database {db.name!r}; only tables of {self._source_db or self._target_db!r} are replicated"
            )
        target = name if db is not None and db.name == self._target_db else self._table_map.get(f"{self._source_db}.{name}", name)
        if target == self._reserved:
            raise self.refuse(f"{target} is the sink's own table")
        table.set("this", exp.to_identifier(target, quoted=True))
        table.set("db", exp.to_identifier(self._target_db, quoted=True))
        return target

    def _step(self, tree: exp.Expression, marked: exp.Expression | None, *, resets: bool, removes_rows: bool) -> TableDdl:
        if not isinstance(marked, exp.Table):
            raise self.refuse("it names no table")
        statement = self._rebuild(tree)  # renames ``marked`` to its target too
        return TableDdl(statement, marked.name, resets, removes_rows)

    def _split(self, tree: exp.Expression, table: exp.Table, *, resets: bool = True, removes_rows: bool = True) -> TableDdl:
        """One table's statement, cut from a statement on several whose tables are qualified already."""
        statement = tree.sql(dialect=_DIALECT, identify=True, comments=False)
        self._check_reads_back(statement)
        return TableDdl(statement, table.name, resets, removes_rows)

    def _rebuild(self, tree: exp.Expression) -> str:
        """Qualify every table of ``tree`` into the sink's database; the statement, checked to say what the event said."""
        key_names = {id(name) for drop in tree.find_all(exp.Drop) if drop.kind != "TABLE" for name in drop.args["tables"]}
        for table in list(tree.find_all(exp.Table)):
            if id(table) in key_names:  # DROP INDEX i, DROP FOREIGN KEY f: the name of a key, not a table
                if table.args.get("db"):
                    raise self.refuse(f"index {table.sql(dialect=_DIALECT)} is not a plain name")
                continue
            self._target(table)
        statement = tree.sql(dialect=_DIALECT, identify=True, comments=False)
        self._check_reads_back(statement)
        # Table names change (qualified, mapped); every other word of the original must still be there.
        renamed = {name.upper() for name in (self._source_db, self._target_db, *self._table_map.values())}
        renamed |= {key.split(".", 1)[-1].upper() for key in self._table_map}
        lost = _words(_DIALECT.tokenize(self._text)) - _words(_DIALECT.tokenize(statement))
        dropped = sorted(word for word in lost if word not in _SPELLINGS and word not in renamed)
        if dropped:
            raise self.refuse(f"sqlglot would leave out {', '.join(dropped)}; a statement is not applied with less than it says")
        return statement

    def _check_reads_back(self, statement: str) -> None:
        """The rebuilt text must parse back into itself: nothing in it reads differently from the tree it came from."""
        try:
            again = sqlglot.parse_one(statement, read=_DIALECT).sql(dialect=_DIALECT, identify=True, comments=False)
        except SqlglotError as exc:
            raise self.refuse(f"sqlglot cannot rebuild it ({_parse_failure(exc)})") from exc
        if again != statement:
            raise self.refuse("sqlglot does not rebuild it the same way twice")

    def _rename(self, tokens: list[Token]) -> list[TableDdl]:
        """RENAME TABLE a TO b[, c TO d ...] (sqlglot keeps it as text): one ALTER TABLE a RENAME TO b per pair."""
        if len(tokens) > 3 or (len(tokens) == 3 and tokens[2].token_type != TokenType.SEMICOLON):
            raise self.refuse("an event carries exactly one statement, this one has more")
        rest = _DIALECT.tokenize(tokens[1].text) if len(tokens) > 1 else []
        if not rest or rest[0].token_type != TokenType.TABLE:
            raise self.refuse("only RENAME TABLE is applied")
        self._check_comments(rest)
        steps = []
        position = 1
        while True:
            source, position = self._table_name(rest, position)
            if position >= len(rest) or rest[position].text.upper() != "TO":
                raise self.refuse("RENAME TABLE needs 'name TO name' pairs")
            target, position = self._table_name(rest, position + 1)
            self._target(source)
            self._target(target)
            rename = exp.Alter(this=source, kind="TABLE", actions=[exp.AlterRename(this=target)])
            steps.append(self._split(rename, source, resets=False, removes_rows=False))
            if position == len(rest):
                return steps
            if rest[position].token_type != TokenType.COMMA:
                raise self.refuse(f"unexpected {rest[position].text!r} in RENAME TABLE")
            position += 1

    def _table_name(self, tokens: list[Token], position: int) -> tuple[exp.Table, int]:
        parts: list[str] = []
        while position < len(tokens) and tokens[position].token_type in _NAME_TOKENS:
            parts.append(tokens[position].text)
            position += 1
            if position < len(tokens) and tokens[position].token_type == TokenType.DOT and len(parts) < 2:
                position += 1
            else:
                break
        if not parts:
            raise self.refuse("RENAME TABLE needs table names")
        return exp.table_(parts[-1], db=parts[0] if len(parts) == 2 else None), position


def _words(tokens: list[Token]) -> Counter[str]:
    """The words of a statement, spelled alike whatever the quoting or case of keywords."""
    words: Counter[str] = Counter()
    for token in tokens:
        if token.token_type in _PUNCTUATION:
            continue
        # Strings as they are; names and keywords in capitals (an unquoted name may read as a keyword: `date`).
        words[token.text if token.token_type == TokenType.STRING else token.text.upper()] += 1
    return words


def _parse_failure(exc: SqlglotError) -> str:
    """Where and why sqlglot could not read a statement, without quoting it."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return f"{first.get('description')} at line {first.get('line')}, column {first.get('col')}"
    return type(exc).__name__
