"""The annotation store's PostgreSQL connection, through psycopg 3, with the face of the
``sqlite3.Connection`` the store is written against: ``execute`` with ``?`` and ``?N``
parameters, rows read by index or by column name, ``in_transaction``, ``executescript``.

One SQL text serves both databases (the store keeps to what both understand: ``ON CONFLICT``,
``IS DISTINCT FROM``, ``RETURNING``, savepoints); what differs lives in ``ml_backend.store``'s two
engines, not in the queries. Connections are in autocommit mode, as the store's SQLite ones are:
a write transaction is an explicit ``BEGIN`` (the store's ``_write``).

Example (needs a server; see harness/postgres_server.py):

    db = connect("postgresql://postgres@127.0.0.1:5432/clinie")
    db.execute("SELECT ?1 + ?1", (20,)).fetchone()[0]   # 40
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

_NUMBERED = re.compile(r"\?(\d+)")


@lru_cache(maxsize=512)
def translate(sql: str) -> tuple[str, bool]:
    """``sql`` with SQLite's parameters as psycopg's, and whether they are numbered (``?1``).

    >>> translate("SELECT a FROM t WHERE b = ?1 OR c = ?1 AND d LIKE '5%'")
    ("SELECT a FROM t WHERE b = %(p1)s OR c = %(p1)s AND d LIKE '5%%'", True)
    >>> translate("INSERT INTO t VALUES (?, ?)")
    ('INSERT INTO t VALUES (%s, %s)', False)
    """
    sql = sql.replace("%", "%%")
    if _NUMBERED.search(sql):
        return _NUMBERED.sub(r"%(p\1)s", sql), True
    return sql.replace("?", "%s"), False


def _parameters(params: Sequence[Any], numbered: bool) -> Sequence[Any] | dict[str, Any]:
    return {f"p{i}": value for i, value in enumerate(params, start=1)} if numbered else tuple(params)


class Row(tuple):
    """A row read by index (``row[0]``) or by column name (``row["version"]``), as ``sqlite3.Row``."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    if cursor.description is None:
        return tuple
    names = {column.name: i for i, column in enumerate(cursor.description)}
    row_type = type("Row", (Row,), {"_names": names})
    return lambda values: row_type(values)


class Cursor:
    """What ``execute`` returns: the rows of the statement, and how many it changed."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Row | None:
        return self._cursor.fetchone() if self._cursor.description is not None else None

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall() if self._cursor.description is not None else []

    def __iter__(self) -> Any:
        return iter(self.fetchall())


class Connection:
    """A psycopg connection that the store uses as it uses ``sqlite3.Connection``."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        text, numbered = translate(sql)
        return Cursor(self._connection.execute(text, _parameters(params, numbered) if params else None))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor:
        text, numbered = translate(sql)
        cursor = self._connection.cursor()
        cursor.executemany(text, [_parameters(row, numbered) for row in rows])
        return Cursor(cursor)

    def executescript(self, sql: str) -> None:
        """Statements without parameters, run as one (the schema)."""
        self._connection.execute(sql)

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self._connection.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self._connection.close()


def connect(url: str) -> Connection:
    """An autocommit connection to the database at ``url`` (``postgresql://…``)."""
    import psycopg  # only a store on PostgreSQL needs it

    return Connection(psycopg.connect(url, autocommit=True, row_factory=_row_factory))


def is_url(location: str) -> bool:
    """Whether a store location names a PostgreSQL database rather than a SQLite file."""
    return location.startswith(("postgresql://", "postgres://"))
