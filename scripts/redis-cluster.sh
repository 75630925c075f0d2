#!/usr/bin/env bash
# A local 3-master Redis Cluster on loopback for the cloakroom-redis tests.
#
#   scripts/redis-cluster.sh start    # idempotent: nothing to do if it is up
#   scripts/redis-cluster.sh status   # exit 0 when cluster_state is ok
#   scripts/redis-cluster.sh stop
#   scripts/redis-cluster.sh start tls   # the same over TLS only, on 7100-7102
#                                        # (certificates: scripts/tls-servers.sh certs)
#
# Needs only redis-server and redis-cli. Data is not persisted (--save "",
# no AOF); node configs live in $CLOAKROOM_REDIS_CLUSTER_DIR
# (default /tmp/cloakroom-redis-cluster). Ports: $CLOAKROOM_REDIS_CLUSTER_PORTS
# (default "7000 7001 7002"). Tests connect with
# CLOAKROOM_REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:7000 (their default).
set -euo pipefail

HOST=127.0.0.1
if [ "${2:-}" = tls ]; then
  TLS_DIR="${CLOAKROOM_TLS_DIR:-/tmp/cloakroom-tls}"
  DIR="${CLOAKROOM_REDIS_TLS_CLUSTER_DIR:-/tmp/cloakroom-redis-tls-cluster}"
  read -r -a PORTS <<<"${CLOAKROOM_REDIS_TLS_CLUSTER_PORTS:-7100 7101 7102}"
  CLI_TLS=(--tls --cacert "$TLS_DIR/ca.pem")
  server_ports() {
    echo --port 0 --tls-port "$1" --tls-cluster yes --tls-auth-clients no \
      --tls-cert-file "$TLS_DIR/server.pem" --tls-key-file "$TLS_DIR/server.key" \
      --tls-ca-cert-file "$TLS_DIR/ca.pem"
  }
else
  DIR="${CLOAKROOM_REDIS_CLUSTER_DIR:-/tmp/cloakroom-redis-cluster}"
  read -r -a PORTS <<<"${CLOAKROOM_REDIS_CLUSTER_PORTS:-7000 7001 7002}"
  CLI_TLS=()
  server_ports() { echo --port "$1"; }
fi

cli() { redis-cli -h "$HOST" "${CLI_TLS[@]}" "$@"; }

up() { [ "$(cli -p "$1" ping 2>/dev/null)" = "PONG" ]; }

state() { cli -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }

healthy() {
  local p
  for p in "${PORTS[@]}"; do
    up "$p" || return 1
    [ "$(state "$p" cluster_state)" = "ok" ] || return 1
    [ "$(state "$p" cluster_known_nodes)" = "${#PORTS[@]}" ] || return 1
  done
}

stop() {
  local p
  for p in "${PORTS[@]}"; do
    if up "$p"; then
      cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
    fi
  done
  for p in "${PORTS[@]}"; do
    for _ in $(seq 50); do up "$p" || break; sleep 0.1; done
  done
  rm -rf "$DIR"
}

start() {
  if healthy; then
    echo "redis cluster already up on ports ${PORTS[*]}"
    return 0
  fi
  # Half-up or stale: start over from nothing (the data is throwaway).
  stop
  mkdir -p "$DIR"
  local p
  for p in "${PORTS[@]}"; do
    # shellcheck disable=SC2046 # server_ports prints separate words
    redis-server $(server_ports "$p") --bind "$HOST" --cluster-enabled yes \
      --cluster-config-file "$DIR/nodes-$p.conf" --dir "$DIR" \
      --save "" --appendonly no --daemonize yes \
      --logfile "$DIR/redis-$p.log" --pidfile "$DIR/redis-$p.pid"
  done
  for p in "${PORTS[@]}"; do
    for _ in $(seq 100); do up "$p" && break; sleep 0.1; done
    up "$p" || { echo "redis-server on port $p did not start; see $DIR/redis-$p.log" >&2; exit 1; }
  done
  local nodes=()
  for p in "${PORTS[@]}"; do nodes+=("$HOST:$p"); done
  cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$DIR/create.log" 2>&1 || {
    cat "$DIR/create.log" >&2
    exit 1
  }
  for _ in $(seq 200); do
    if healthy; then
      echo "redis cluster up on ports ${PORTS[*]}"
      return 0
    fi
    sleep 0.1
  done
  echo "redis cluster did not reach cluster_state:ok" >&2
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop; echo "redis cluster stopped" ;;
  status)
    if healthy; then echo "redis cluster ok on ports ${PORTS[*]}"; else echo "redis cluster not running or not ok"; exit 1; fi
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
