#!/usr/bin/env bash
# Make sure the PostgreSQL the state-store tests use answers on 127.0.0.1:5432 (trust auth, database "test"),
# and Redis on 127.0.0.1:6379.
# Machines that already run one are left alone; elsewhere, as root, it is installed and started.
set -euo pipefail
dsn_ok() {
  "${VENV_PY:-.venv/bin/python}" - <<'PY'
import asyncio, os, sys
import asyncpg
async def main():
    c = await asyncpg.connect(os.environ.get("CASGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"), timeout=3)
    await c.close()
try:
    asyncio.run(main())
except Exception as exc:
    print(f"PostgreSQL not usable yet: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}
redis_ok() {
  "${VENV_PY:-.venv/bin/python}" -c "import socket; s = socket.create_connection(('127.0.0.1', 6379), 3); s.sendall(b'PING\r\n'); assert s.recv(16).startswith(b'+PONG')" 2>/dev/null
}
# Redis for the two-node tests (the bus between gateway nodes): started here when nothing answers on :6379.
if ! redis_ok; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: the tests need Redis at 127.0.0.1:6379" >&2
    exit 1
  fi
  command -v redis-server >/dev/null || {
    echo "installing Redis for the two-node tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  }
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no >/dev/null
  for _ in $(seq 1 30); do redis_ok && break; sleep 0.5; done
  redis_ok || { echo "error: Redis did not start on 127.0.0.1:6379" >&2; exit 1; }
fi
dsn_ok && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "error: the tests need PostgreSQL at 127.0.0.1:5432 (user postgres, database test, trust auth); set CASGATE_TEST_PG_DSN to use another" >&2
  exit 1
fi
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "installing PostgreSQL for the state-store tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
ver=$(ls /etc/postgresql | sort -V | tail -n1)
hba=/etc/postgresql/$ver/main/pg_hba.conf
if ! grep -q "casgate-tests" "$hba"; then
  # Loopback-only trust for the test database, placed first so it wins.
  { echo "host all postgres 127.0.0.1/32 trust # casgate-tests"; cat "$hba"; } > "$hba.new" && mv "$hba.new" "$hba"
fi
pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || true
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" | grep -q 1 || su postgres -c "createdb test"
dsn_ok
