"""Where the tables live: DuckDB (embedded, the default) or PostgreSQL, behind one small interface.

A :class:`Store` runs SQL written once for both: ``:name`` placeholders (translated to each driver's
own), portable types and functions only (no ``::`` casts, no dialect-only aggregates). Each thread
gets its own connection (DuckDB cursors / psycopg connections), so the decision service may call a
store from its worker threads. :func:`open_store` picks the backend by URL::

    duckdb:///path/to/risk.duckdb     a file (created when missing); ``duckdb://:memory:`` in memory
    path/to/risk.duckdb               the same, without the scheme
    postgresql://user@host:5432/db?schema=risk_a    a server; ``schema`` (optional) is created and used

This module knows nothing about features, rules or models; :data:`TRANSACTIONS_DDL` is the one
table every other module reads.
"""
from __future__ import annotations

import io
import re
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from autoglm.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Store", "open_store", "register_backend", "TRANSACTIONS_COLUMNS", "TRANSACTIONS_DDL", "write_dataset"]

_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

TRANSACTIONS_COLUMNS = ["txn_id", "ts", "user_id", "card_id", "device_id", "merchant_id", "category", "amount",
                        "ip", "country", "continent", "lat", "lon", "is_fraud", "fraud_type"]
# is_fraud: 1 fraud, 0 legitimate, NULL not known yet (a live transaction before review)
TRANSACTIONS_DDL = """CREATE TABLE transactions (
    txn_id BIGINT PRIMARY KEY, ts BIGINT NOT NULL, user_id BIGINT NOT NULL, card_id BIGINT NOT NULL,
    device_id BIGINT NOT NULL, merchant_id BIGINT NOT NULL, category VARCHAR NOT NULL,
    amount DOUBLE PRECISION NOT NULL, ip VARCHAR, country VARCHAR NOT NULL, continent VARCHAR NOT NULL,
    lat DOUBLE PRECISION NOT NULL, lon DOUBLE PRECISION NOT NULL, is_fraud INTEGER, fraud_type VARCHAR)"""
_INDEXES = ["CREATE INDEX tx_user ON transactions (user_id, ts)", "CREATE INDEX tx_card ON transactions (card_id, ts)",
            "CREATE INDEX tx_device ON transactions (device_id, ts)"]


class Store(ABC):
    """One database. ``dialect`` is ``duckdb`` or ``postgresql``."""

    dialect: str = ""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []

    # -- the driver ----------------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> Any: ...

    @abstractmethod
    def _translate(self, sql: str) -> str: ...

    def conn(self) -> Any:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._connect()
            self._local.conn = c
            with self._lock:
                self._all.append(c)
        return c

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.conn().execute(self._translate(sql), params or {})

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        cur = self.conn().execute(self._translate(sql), params or {})
        return [tuple(r) for r in cur.fetchall()]

    @abstractmethod
    def frame(self, sql: str, params: dict[str, Any] | None = None) -> "pd.DataFrame": ...

    @abstractmethod
    def append_frame(self, table: str, df: "pd.DataFrame") -> None:
        """Insert the rows of ``df`` (its columns are the table's, in any order) into ``table``."""

    def insert(self, table: str, row: dict[str, Any]) -> None:
        cols = list(row)
        self.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})", row)

    def has_table(self, name: str) -> bool:
        return bool(self.query("SELECT 1 FROM information_schema.tables WHERE table_name = :n AND table_schema = "
                               ":s", {"n": name, "s": self.schema}))

    @property
    def schema(self) -> str:
        return "main"

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except Exception:
                    pass
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class DuckDBStore(Store):
    dialect = "duckdb"

    def __init__(self, path: str):
        super().__init__()
        try:
            import duckdb
        except ImportError:
            raise ConfigError("the DuckDB store needs duckdb: pip install -c constraints.txt -e apps/risk") from None
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._root = duckdb.connect(path)

    def _connect(self) -> Any:
        return self._root.cursor()  # a cursor is a connection of its own to the same database

    def _translate(self, sql: str) -> str:
        return _PLACEHOLDER.sub(r"$\1", sql)

    def frame(self, sql: str, params: dict[str, Any] | None = None) -> "pd.DataFrame":
        return self.conn().execute(self._translate(sql), params or {}).df()

    def append_frame(self, table: str, df: "pd.DataFrame") -> None:
        c = self.conn()
        c.register("_incoming", df)
        try:
            c.execute(f"INSERT INTO {table} ({', '.join(df.columns)}) SELECT {', '.join(df.columns)} FROM _incoming")
        finally:
            c.unregister("_incoming")

    def close(self) -> None:
        super().close()
        self._root.close()


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str):
        super().__init__()
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError('the PostgreSQL store needs psycopg: pip install -c constraints.txt -e ".[gateway]"') \
                from None
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        schema = (query.pop("schema", [None]) or [None])[0]
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"store URL: schema {schema!r} is not a plain SQL name (letters, digits, _)")
        self._schema = schema or "public"
        self.url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        if schema:
            with self._raw() as c:
                c.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

    def _raw(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True)
        except psycopg.OperationalError as e:
            raise ConfigError(f"cannot connect to PostgreSQL at {_redact(self.url)}: {str(e).strip().splitlines()[0]}") \
                from None

    def _connect(self) -> Any:
        c = self._raw()
        c.execute(f'SET search_path TO "{self._schema}"')
        return c

    @property
    def schema(self) -> str:
        return self._schema

    def _translate(self, sql: str) -> str:
        return _PLACEHOLDER.sub(r"%(\1)s", sql.replace("%", "%%"))

    def frame(self, sql: str, params: dict[str, Any] | None = None) -> "pd.DataFrame":
        import pandas as pd

        cur = self.conn().execute(self._translate(sql), params or {})
        cols = [d.name for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)

    def append_frame(self, table: str, df: "pd.DataFrame") -> None:
        c = self.conn()
        cols = ", ".join(df.columns)
        with c.cursor() as cur:
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
                for start in range(0, len(df), 200_000):
                    buf = io.StringIO()
                    df.iloc[start:start + 200_000].to_csv(buf, index=False, header=False)
                    copy.write(buf.getvalue())

    def drop_schema(self) -> None:
        """Remove this store's schema and everything in it (tests use one schema each)."""
        if self._schema != "public":
            self.close()
            with self._raw() as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{self._schema}" CASCADE')


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


_BACKENDS: dict[str, Callable[[str], Store]] = {}


def register_backend(scheme: str, factory: Callable[[str], Store]) -> None:
    _BACKENDS[scheme] = factory


def _duckdb_from_url(url: str) -> Store:
    rest = url.split("://", 1)[1]  # duckdb:///abs/path -> /abs/path; duckdb://rel/path; duckdb://:memory:
    return DuckDBStore(rest or ":memory:")


register_backend("duckdb", _duckdb_from_url)
register_backend("postgresql", PostgresStore)
register_backend("postgres", lambda url: PostgresStore("postgresql" + url[len("postgres"):]))


def open_store(url: str | Path) -> Store:
    """The store a URL (or a ``.duckdb`` path) names; see the module docstring."""
    text = str(url)
    if "://" not in text:
        return DuckDBStore(text)
    scheme = text.split("://", 1)[0].lower()
    factory = _BACKENDS.get(scheme)
    if factory is None:
        raise ConfigError(f"store URL {_redact(text)!r}: unknown scheme {scheme!r}; use duckdb:///FILE, a .duckdb "
                          f"path, or postgresql://user@host/db")
    return factory(text)


def _sql_type(dtype: Any) -> str:
    kind = getattr(dtype, "kind", "O")
    return {"i": "BIGINT", "u": "BIGINT", "f": "DOUBLE PRECISION", "b": "BOOLEAN"}.get(kind, "VARCHAR")


def create_table_for(store: Store, name: str, df: "pd.DataFrame") -> None:
    cols = ", ".join(f"{c} {_sql_type(df[c].dtype)}" for c in df.columns)
    store.execute(f"DROP TABLE IF EXISTS {name}")
    store.execute(f"CREATE TABLE {name} ({cols})")


def write_dataset(store: Store, tables: dict[str, "pd.DataFrame"], *, indexes: bool = True,
                  progress: Callable[[str], None] | None = None) -> None:
    """Replace ``tables`` (name -> frame) in ``store``; ``transactions`` gets :data:`TRANSACTIONS_DDL` and
    its per-entity indexes (the online feature query looks rows up by user, card and device)."""
    for name, df in tables.items():
        if name == "transactions":
            store.execute("DROP TABLE IF EXISTS transactions")
            store.execute(TRANSACTIONS_DDL)
            store.append_frame("transactions", df[TRANSACTIONS_COLUMNS])
            if indexes:
                for ddl in _INDEXES:
                    store.execute(ddl)
        else:
            create_table_for(store, name, df)
            store.append_frame(name, df)
        if progress:
            progress(f"wrote {name}: {len(df):,} rows")
