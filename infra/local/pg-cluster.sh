#!/usr/bin/env bash
# pg-cluster.sh — a private, throw-away PostgreSQL cluster on loopback.
#
# Used by infra/local/stack.sh and by tests that need a PostgreSQL they can
# stop and start themselves.
#
#   pg-cluster.sh init   DIR PORT   initdb into DIR/data (idempotent), config for PORT
#   pg-cluster.sh start  DIR PORT   start it on 127.0.0.1:PORT, wait until it accepts
#                                   connections (idempotent when already on PORT)
#   pg-cluster.sh stop   DIR        pg_ctl stop -m fast (idempotent)
#   pg-cluster.sh status DIR        prints "running PID PORT" (exit 0) or "stopped" (exit 3)
#   pg-cluster.sh bindir            prints the directory of the PostgreSQL binaries
#
# Layout of DIR: data/ (the cluster), sock/ (unix socket), postgres.log.
# The cluster: superuser `postgres`, trust auth (local socket and
# 127.0.0.1/::1 only), listen_addresses=127.0.0.1, fsync=off,
# max_connections=300, UTF8 with C locale. No password anywhere:
#   psql -h 127.0.0.1 -p PORT -U postgres postgres
#
# PostgreSQL binaries are taken from $BACKORDER_PG_BIN, then PATH, then
# /usr/lib/postgresql/*/bin (newest first); when none are found Debian's
# `postgresql` package is installed with apt-get (needs root, or sudo).
# initdb/postgres refuse to run as root, so as root every server command runs
# as the `postgres` user (runuser); DIR is chowned to it and any parent of DIR
# that `postgres` cannot traverse gets o+x.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'pg-cluster.sh: error: %s\n' "$*" >&2; exit 1; }

is_root() { [[ $(id -u) -eq 0 ]]; }

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# --- binaries ---------------------------------------------------------------

pg_bin_ok() { [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]; }

find_pg_bin() {
    local d c
    if [[ -n ${BACKORDER_PG_BIN:-} ]] && pg_bin_ok "$BACKORDER_PG_BIN"; then
        printf '%s\n' "$BACKORDER_PG_BIN"; return 0
    fi
    if c=$(command -v initdb 2>/dev/null) && command -v pg_ctl >/dev/null 2>&1; then
        d=$(dirname "$(readlink -f "$c")")
        if pg_bin_ok "$d"; then printf '%s\n' "$d"; return 0; fi
    fi
    # shellcheck disable=SC2012  # paths are /usr/lib/postgresql/<version>/bin
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if pg_bin_ok "$d"; then printf '%s\n' "$d"; return 0; fi
    done
    return 1
}

ensure_pg_bin() {
    local d sudo=()
    if d=$(find_pg_bin); then printf '%s\n' "$d"; return 0; fi
    if ! is_root; then
        command -v sudo >/dev/null 2>&1 || die "PostgreSQL is not installed and we are not root (no sudo either)"
        sudo=(sudo)
    fi
    log "PostgreSQL binaries not found: installing Debian's postgresql (apt-get)"
    (
        # Several callers (tests in parallel) may get here at once.
        flock -w 900 9 || die "timed out waiting for the install lock"
        find_pg_bin >/dev/null && exit 0
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get update -qq >&2
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql >&2
    ) 9>/tmp/backorder-pg-install.lock
    find_pg_bin || die "installed postgresql but found no initdb/pg_ctl"
}

ensure_pg_user() {
    is_root || return 0
    id postgres >/dev/null 2>&1 && return 0
    log "creating system user postgres"
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/sh postgres
}

# Run a command as the cluster owner (postgres when we are root), from / so
# that an inaccessible cwd does not bother initdb/pg_ctl.
as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# Make every parent of $1 traversable by postgres (o+x where needed).
open_parents() {
    is_root || return 0
    local p=$1 parents=() i
    while [[ $p != / ]]; do
        p=$(dirname "$p")
        parents+=("$p")
    done
    # Top-down: a directory is reachable only if all of its parents are.
    for ((i = ${#parents[@]} - 1; i >= 0; i--)); do
        p=${parents[i]}
        if ! runuser -u postgres -- test -x "$p"; then
            log "chmod o+x $p (so that user postgres can reach the cluster)"
            chmod o+x "$p"
        fi
    done
}

# --- cluster ----------------------------------------------------------------

# True when process $1 exists and is not a zombie (pid 1 here may be slow to
# reap orphans, and kill -0 succeeds on a zombie).
proc_alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != [ZX] ]]
}

abs_dir() { realpath -m -- "$1"; }

check_port() {
    if ! [[ $1 =~ ^[0-9]+$ ]] || (( $1 < 1 || $1 > 65535 )); then die "bad port: $1"; fi
}

# Writes DIR/data/backorder.conf (included from postgresql.conf).
write_conf() {
    local dir=$1 port=$2 sockdirs
    local sock="$dir/sock"
    # A unix socket path is limited to 107 bytes: without room, TCP only.
    if (( ${#sock} + 20 < 107 )); then sockdirs=$sock; else sockdirs=''; fi
    cat >"$dir/data/backorder.conf.tmp" <<EOF
# Written by infra/local/pg-cluster.sh; rewritten at every start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockdirs'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
EOF
    mv -f "$dir/data/backorder.conf.tmp" "$dir/data/backorder.conf"
    if is_root; then chown postgres: "$dir/data/backorder.conf"; fi
}

# Echoes "PID PORT" of a live postmaster for DIR; fails when none.
running_pid_port() {
    local dir=$1 pidfile="$1/data/postmaster.pid" pid port
    [[ -r $pidfile ]] || return 1
    { read -r pid; read -r _; read -r _; read -r port; } <"$pidfile" || true
    [[ -n ${pid:-} && -n ${port:-} ]] || return 1
    proc_alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] || return 1
    printf '%s %s\n' "$pid" "$port"
}

cmd_init() {
    [[ $# -eq 2 ]] || usage
    local dir port=$2 bin
    dir=$(abs_dir "$1"); check_port "$port"
    bin=$(ensure_pg_bin)
    ensure_pg_user
    mkdir -p "$dir/sock"
    if is_root; then
        chown postgres: "$dir" "$dir/sock"
        open_parents "$dir/sock"
    fi
    if [[ ! -f $dir/data/PG_VERSION ]]; then
        log "initdb $dir/data"
        rm -rf "$dir/data"
        as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        printf "\ninclude 'backorder.conf'\n" >>"$dir/data/postgresql.conf"
    fi
    write_conf "$dir" "$port"
}

cmd_start() {
    [[ $# -eq 2 ]] || usage
    local dir port=$2 bin cur
    dir=$(abs_dir "$1"); check_port "$port"
    if cur=$(running_pid_port "$dir"); then
        [[ ${cur#* } == "$port" ]] || die "cluster $dir is already running on port ${cur#* }, not $port"
        log "postgres already running on 127.0.0.1:$port (pid ${cur% *})"
        return 0
    fi
    [[ -f $dir/data/PG_VERSION ]] || cmd_init "$dir" "$port"
    # Not running: a postmaster.pid left by a crash or a machine restart is
    # stale (its pid may now belong to another process, which postgres refuses).
    rm -f "$dir/data/postmaster.pid"
    bin=$(ensure_pg_bin)
    if is_root; then
        runuser -u postgres -- test -x "$dir/sock" || open_parents "$dir/sock"
    fi
    write_conf "$dir" "$port"
    if ! as_pg "$bin/pg_ctl" start -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
            -o "-p $port" >/dev/null; then
        tail -n 30 "$dir/postgres.log" >&2 || true
        die "postgres did not start on 127.0.0.1:$port (log: $dir/postgres.log)"
    fi
    # pg_ctl -w already waited; double-check over TCP with a deadline.
    local deadline=$((SECONDS + 30))
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; do
        (( SECONDS < deadline )) || die "postgres on 127.0.0.1:$port is not ready"
        sleep 0.1
    done
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local dir bin
    dir=$(abs_dir "$1")
    running_pid_port "$dir" >/dev/null || return 0
    bin=$(find_pg_bin) || die "no PostgreSQL binaries found"
    as_pg "$bin/pg_ctl" stop -D "$dir/data" -m fast -w -t 60 >/dev/null
}

cmd_status() {
    [[ $# -eq 1 ]] || usage
    local cur
    if cur=$(running_pid_port "$(abs_dir "$1")"); then
        echo "running $cur"
    else
        echo "stopped"; return 3
    fi
}

case ${1:-} in
    init)   shift; cmd_init "$@" ;;
    start)  shift; cmd_start "$@" ;;
    stop)   shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    bindir) shift; [[ $# -eq 0 ]] || usage; ensure_pg_bin ;;
    *) usage ;;
esac
