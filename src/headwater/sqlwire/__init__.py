"""The PostgreSQL wire protocol (v3) over Headwater's read-only SQL surface, for psql and BI tools.

Modules: `messages` (framing and value formats), `sqltext` (parameters, PostgreSQL spellings, SET/SHOW/BEGIN),
`catalog` (the look-alike catalog psql, Metabase and Superset read), `auth` (keys and web users), `session` (the
simple and extended query protocols), `server` (sockets, TLS, start-up).

Why not buenavista 0.5.0 (evaluated, installed): its protocol handler only offers MD5 authentication against a
dict of plaintext passwords (Headwater stores keys as SHA-256 and passwords as argon2, so MD5 cannot be checked),
answers every SSL request with "N" (no TLS), accepts connections only from 127.0.0.1 unless an environment
variable is set, sends errors without severity or SQLSTATE, treats any query ending in `}` as a JSON "extension"
call, executes a statement to describe it with made-up parameter values, and maps few types (no timestamptz, no
json). Its DuckDB backend runs SQL on a raw DuckDB connection, which Headwater's sandbox forbids. Keeping it would
mean overriding nearly every method of its handler; this package is the same size as those overrides, uses only
the standard library (asyncio, ssl), and runs every query through `QueryEngine` behind `QuerySlots`. riffq is not
installable here. No dependency replaces buenavista: it can be dropped.
"""
