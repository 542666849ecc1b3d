#!/usr/bin/env bash
# services.sh — run the six backorder services in the background against the
# local stack (.stack/env), one process each.
#
#   services.sh start    build if needed, start what is not running
#   services.sh stop     SIGTERM every service, wait for a clean exit
#   services.sh status   one line per service
#
# Logs: .stack/services/<name>.log; pids: .stack/services/<name>.pid;
# operational endpoints (/healthz, /readyz, /metrics) on the ports listed in
# .stack/services/ports.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
STACK_DIR=$(realpath -m -- "${BACKORDER_STACK_DIR:-$REPO/.stack}")
SVC_DIR=$STACK_DIR/services
BIN_DIR=${BACKORDER_BIN_DIR:-$REPO/target/debug}
SERVICES=(orders-consumer stock-consumer shipments-consumer offers-consumer segmentation sender)
BASE_PORT=${BACKORDER_SERVICES_BASE_PORT:-18080}

log() { printf '==> %s\n' "$*"; }
die() { printf 'services.sh: error: %s\n' "$*" >&2; exit 1; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null && ! grep -q '^Z' <(awk '{print $3}' "/proc/$(cat "$1")/stat" 2>/dev/null); }

start() {
    [[ -f $STACK_DIR/env ]] || die "the local stack is not up: run 'make up' first"
    mkdir -p "$SVC_DIR"
    : >"$SVC_DIR/ports"
    # Links in emails open the offers service's pages (no ingress locally).
    local OFFERS_PORT=$((BASE_PORT + 3))
    local i=0
    for name in "${SERVICES[@]}"; do
        local port=$((BASE_PORT + i)) pidfile=$SVC_DIR/$name.pid
        i=$((i + 1))
        echo "$name http://127.0.0.1:$port" >>"$SVC_DIR/ports"
        if alive "$pidfile"; then
            continue
        fi
        [[ -x $BIN_DIR/$name ]] || die "$BIN_DIR/$name is missing: run 'cargo build --bins' first"
        log "starting $name (http://127.0.0.1:$port)"
        (
            cd "$REPO"
            BACKORDER_HTTP_ADDR=127.0.0.1:$port \
            BACKORDER_RUN_MIGRATIONS=true \
            BACKORDER_LOG_FORMAT=${BACKORDER_LOG_FORMAT:-pretty} \
            BACKORDER_POLICY_FILE=${BACKORDER_POLICY_FILE:-$SCRIPT_DIR/policy.toml} \
            BACKORDER_OFFERS_BASE_URL=${BACKORDER_OFFERS_BASE_URL:-http://127.0.0.1:$OFFERS_PORT} \
            BACKORDER_STACK_ENV=$STACK_DIR/env \
                setsid "$BIN_DIR/$name" >>"$SVC_DIR/$name.log" 2>&1 </dev/null &
            echo $! >"$pidfile"
        )
    done
    # Wait (with a deadline) until every service answers /readyz.
    local deadline=$((SECONDS + 60))
    i=0
    for name in "${SERVICES[@]}"; do
        local port=$((BASE_PORT + i))
        i=$((i + 1))
        until curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
            alive "$SVC_DIR/$name.pid" || die "$name exited; see $SVC_DIR/$name.log"
            ((SECONDS < deadline)) || die "$name not ready after 60 s; see $SVC_DIR/$name.log"
            sleep 0.2
        done
    done
    log "all services ready (logs in $SVC_DIR)"
}

stop() {
    shopt -s nullglob
    local pids=()
    for pidfile in "$SVC_DIR"/*.pid; do
        if alive "$pidfile"; then
            kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
            pids+=("$(cat "$pidfile")")
        fi
        rm -f "$pidfile"
    done
    local deadline=$((SECONDS + 15))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
            if ((SECONDS >= deadline)); then
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    done
    ((${#pids[@]} == 0)) || log "stopped ${#pids[@]} services"
}

status() {
    for name in "${SERVICES[@]}"; do
        if alive "$SVC_DIR/$name.pid"; then echo "$name: running"; else echo "$name: stopped"; fi
    done
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: services.sh start|stop|status" ;;
esac
