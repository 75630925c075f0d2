#!/usr/bin/env bash
# TLS on loopback for the TLS tests: a throwaway CA and server certificate,
# Postgres and MariaDB switched to that certificate, and a TLS-only Redis.
#
#   scripts/tls-servers.sh start    # idempotent
#   scripts/tls-servers.sh certs    # only (re)create the certificates
#
# Certificates: $CLOAKROOM_TLS_DIR (default /tmp/cloakroom-tls): ca.pem
# (the CA the tests trust), server.pem/server.key (for localhost and
# 127.0.0.1). The CA is made here, at test time, and never leaves the
# machine. Servers afterwards:
#   Postgres  127.0.0.1:5432  ssl = on with server.pem (plain text still allowed)
#   MariaDB   127.0.0.1:3306  ssl_cert/ssl_key/ssl_ca (plain text still allowed)
#   Redis     127.0.0.1:6380  TLS only ($CLOAKROOM_REDIS_TLS_PORT)
#   Redis Cluster over TLS: scripts/redis-cluster.sh start tls (7100-7102)
# Needs root (it writes the servers' configuration) and openssl.
set -euo pipefail

DIR="${CLOAKROOM_TLS_DIR:-/tmp/cloakroom-tls}"
REDIS_TLS_PORT="${CLOAKROOM_REDIS_TLS_PORT:-6380}"
PG_VERSION="$(ls /etc/postgresql 2>/dev/null | head -n1 || true)"

certs() {
  if [ -s "$DIR/ca.pem" ] && [ -s "$DIR/server.pem" ] && openssl x509 -checkend 86400 -noout -in "$DIR/server.pem" >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=cloakroom test CA" \
    -keyout "$DIR/ca.key" -out "$DIR/ca.pem" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$DIR/server.key" -out "$DIR/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"$DIR/server.ext"
  openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial \
    -days 30 -extfile "$DIR/server.ext" -out "$DIR/server.pem" >/dev/null 2>&1
  chmod 644 "$DIR/ca.pem" "$DIR/server.pem"
  chmod 600 "$DIR/ca.key" "$DIR/server.key"
  echo "test certificates in $DIR"
}

# Copy the server pair where a service user can read it (a key must be
# owned by the server's user and private for Postgres to accept it).
install_pair() { # dest-dir owner
  mkdir -p "$1"
  cp "$DIR/server.pem" "$DIR/server.key" "$DIR/ca.pem" "$1/"
  chown -R "$2" "$1"
  chmod 600 "$1/server.key"
}

postgres() {
  [ -n "$PG_VERSION" ] || { echo "no PostgreSQL cluster on this machine" >&2; return 1; }
  local dest=/var/lib/postgresql/cloakroom-tls
  install_pair "$dest" postgres:postgres
  if [ "$(psql -h 127.0.0.1 -U postgres -tAc 'SHOW ssl_cert_file')" != "$dest/server.pem" ]; then
    psql -h 127.0.0.1 -U postgres -q -c "ALTER SYSTEM SET ssl = on" \
      -c "ALTER SYSTEM SET ssl_cert_file = '$dest/server.pem'" \
      -c "ALTER SYSTEM SET ssl_key_file = '$dest/server.key'"
  fi
  # A reload also picks up a renewed certificate at the same path.
  psql -h 127.0.0.1 -U postgres -q -tAc "SELECT pg_reload_conf()" >/dev/null
  sleep 1
  echo "PostgreSQL serves TLS with the test certificate"
}

mariadb_tls() {
  # /etc/my.cnf is read before Debian's /etc/mysql/my.cnf, which includes
  # no directory; it is only ever written when absent or written by us.
  local dest=/etc/mysql/cloakroom-tls conf=/etc/my.cnf
  install_pair "$dest" mysql:mysql
  if [ -e "$conf" ] && ! grep -q "cloakroom's scripts/tls-servers.sh" "$conf"; then
    echo "$conf exists and is not ours; add ssl_cert/ssl_key/ssl_ca for $dest by hand" >&2
    return 1
  fi
  cat >"$conf" <<EOF
# Written by cloakroom's scripts/tls-servers.sh for its TLS tests.
[mariadbd]
ssl_cert = $dest/server.pem
ssl_key = $dest/server.key
ssl_ca = $dest/ca.pem
# Each conformance case opens its own pool; the default 151 runs out.
max_connections = 500
EOF
  if [ "$(mariadb -h 127.0.0.1 -u root -N -e "SELECT @@have_ssl")" != "YES" ]; then
    echo "restarting MariaDB with TLS"
    mariadb-admin -h 127.0.0.1 -u root shutdown || true
    for _ in $(seq 100); do pgrep -x mariadbd >/dev/null || break; sleep 0.1; done
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 100); do mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 0.2; done
  else
    mariadb -h 127.0.0.1 -u root -e "FLUSH SSL" 2>/dev/null || true
  fi
  [ "$(mariadb -h 127.0.0.1 -u root -N -e "SELECT @@have_ssl")" = "YES" ] || { echo "MariaDB did not enable TLS" >&2; return 1; }
  echo "MariaDB serves TLS with the test certificate"
}

redis_tls() {
  local cli=(redis-cli -h 127.0.0.1 -p "$REDIS_TLS_PORT" --tls --cacert "$DIR/ca.pem")
  if [ "$("${cli[@]}" ping 2>/dev/null)" = "PONG" ]; then
    echo "TLS Redis already up on $REDIS_TLS_PORT"
    return 0
  fi
  redis-server --port 0 --tls-port "$REDIS_TLS_PORT" --bind 127.0.0.1 \
    --tls-cert-file "$DIR/server.pem" --tls-key-file "$DIR/server.key" \
    --tls-ca-cert-file "$DIR/ca.pem" --tls-auth-clients no \
    --save "" --appendonly no --daemonize yes \
    --dir "$DIR" --logfile "$DIR/redis-tls.log" --pidfile "$DIR/redis-tls.pid"
  for _ in $(seq 100); do [ "$("${cli[@]}" ping 2>/dev/null)" = "PONG" ] && break; sleep 0.1; done
  [ "$("${cli[@]}" ping 2>/dev/null)" = "PONG" ] || { echo "TLS Redis did not start; see $DIR/redis-tls.log" >&2; return 1; }
  echo "TLS Redis up on $REDIS_TLS_PORT"
}

case "${1:-}" in
  certs) certs ;;
  start)
    certs
    postgres
    mariadb_tls
    redis_tls
    ;;
  *) echo "usage: $0 start|certs" >&2; exit 2 ;;
esac
