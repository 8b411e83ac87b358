#!/usr/bin/env bash
# A single-node KRaft Apache Kafka broker for padimd's tests and local runs, assembled
# from Maven Central jars: these machines have Java and Maven but no Docker engine and
# no access to the Apache download site.
#
# Usage: scripts/kafka-broker.sh start|stop|status|fetch [--dir DIR] [--sasl]
#   fetch   resolve the broker jars into .kafka/jars (once; later runs are offline)
#   start   start a fresh, empty broker on free ports, wait until it serves clients,
#           write its bootstrap address to DIR/bootstrap and print it on stdout
#           --sasl: also open a SASL_PLAINTEXT listener (mechanisms PLAIN and
#           SCRAM-SHA-256) for the user "padimd" with a password made for this start;
#           its address goes to DIR/bootstrap_sasl, the password to DIR/sasl_password
#           (mode 600; never printed). The PLAINTEXT listener stays as it is.
#   stop    SIGTERM, then SIGKILL after a bound; removes the pid file
#   status  exit 0 and print the bootstrap address when running, exit 3 when not
# DIR defaults to .kafka/run in the repository; it holds server.properties,
# broker.log, broker.pid, bootstrap and the broker's data (DIR/data); with --sasl also
# bootstrap_sasl and sasl_password (server.properties then holds the password too, so
# it is mode 600 as well).
# Messages go to stderr so that `addr=$(scripts/kafka-broker.sh start)` works.
#
# Environment: PADIMD_KAFKA_JARS (jar cache dir), PADIMD_KAFKA_START_TIMEOUT_S (90),
# PADIMD_KAFKA_HEAP (512m).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=$repo_root/tools/kafka
jars_dir=${PADIMD_KAFKA_JARS:-$repo_root/.kafka/jars}
start_timeout_s=${PADIMD_KAFKA_START_TIMEOUT_S:-90}
heap=${PADIMD_KAFKA_HEAP:-512m}
stop_timeout_s=30
# KafkaRaftServer logs this once the broker is unfenced and serving clients.
ready_line='Kafka Server started'
# How much of a log to show when something fails: enough for a Java stack trace.
log_tail_lines=60

say() { echo "kafka-broker: $*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    echo "usage: $0 start|stop|status|fetch [--dir DIR] [--sasl]" >&2
    exit 2
}

# --- jars -------------------------------------------------------------------------

# Resolve kafka_2.13 and its logging backend into $jars_dir. A stamp with the pom's
# hash makes later runs skip Maven entirely (offline, instant); a lock keeps two
# concurrent setups from interleaving, and the copy is swapped in whole so that an
# interrupted download never leaves a half-filled cache behind.
fetch_jars() {
    local want stamp tmp
    want=$(sha256sum "$tools_dir/pom.xml" | cut -d' ' -f1)
    stamp=$jars_dir/.pom-sha256
    if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
        return 0
    fi
    mkdir -p "$(dirname "$jars_dir")"
    exec 9>"$jars_dir.lock"
    flock 9
    if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then  # another run just did it
        exec 9>&-
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (scripts/setup.sh installs Maven)"
    say "resolving Kafka broker jars from Maven Central into $jars_dir"
    tmp=$(mktemp -d "$jars_dir.tmp.XXXXXX")
    # Maven's output is only worth reading when it fails.
    if ! mvn -B -Dstyle.color=never -f "$tools_dir/pom.xml" \
            dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1; then
        show_log_tail "$tmp.mvn.log"
        rm -rf "$tmp" "$tmp.mvn.log"
        die "Maven could not resolve the jars of $tools_dir/pom.xml"
    fi
    rm -f "$tmp.mvn.log"
    echo "$want" >"$tmp/.pom-sha256"
    rm -rf "$jars_dir"
    mv "$tmp" "$jars_dir"
    say "$(find "$jars_dir" -name '*.jar' | wc -l) jars cached"
    exec 9>&-
}

# --- process helpers --------------------------------------------------------------

# True when $1 is a live (not zombie) process running the Kafka broker main class.
# Checking the command line keeps a stale pid file from ever signalling a reused pid.
is_broker_pid() {
    local pid=$1 state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/stat ]] || return 1
    # Field 3 of /proc/PID/stat is the state; an orphaned broker that was killed may
    # linger as a zombie until it is reaped, and counts as stopped.
    state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka '
}

running_pid() {
    local pid_file=$run_dir/broker.pid pid
    [[ -f $pid_file ]] || return 1
    pid=$(<"$pid_file")
    is_broker_pid "$pid" || return 1
    echo "$pid"
}

show_log_tail() {
    local file=$1
    if [[ -f $file ]]; then
        echo "----- last $log_tail_lines lines of $file -----" >&2
        tail -n "$log_tail_lines" "$file" >&2
        echo "----- end of $file -----" >&2
    fi
}

# $1 (default 2) distinct free ports (broker, controller[, SASL]): bind them all at
# once, then release them for Kafka. Another process could grab one in between; start
# retries on that.
free_ports() {
    "$python" - "${1:-2}" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
}

# A KRaft cluster id is 16 random bytes in URL-safe base64 without padding; generating
# it here saves a JVM start (`kafka-storage random-uuid`). Like Kafka's own generator,
# reject ids that start with "-": the format tool would parse them as an option.
random_cluster_id() {
    local id
    while true; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        if [[ $id != -* ]]; then
            echo "$id"
            return
        fi
    done
}

# The SASL test user's password: hex, so that neither the JAAS config nor the format
# tool's SCRAM syntax ([name=...,password=...]) needs any quoting.
random_password() {
    "$python" -c 'import secrets; print(secrets.token_hex(16))'
}

# The SASL_PLAINTEXT listener on port $1 with password $2, added to server.properties
# $3. Only clients use it: inter-broker and controller traffic stay PLAINTEXT.
add_sasl_listener() {
    local port=$1 password=$2 props=$3 listener=SASL_PLAINTEXT://127.0.0.1:$1
    sed -i -e "s|^listeners=.*|&,$listener|" \
        -e "s|^advertised.listeners=.*|&,$listener|" \
        -e "s|^listener.security.protocol.map=.*|&,SASL_PLAINTEXT:SASL_PLAINTEXT|" \
        "$props"
    cat >>"$props" <<EOF

# --sasl: a SASL_PLAINTEXT listener for clients (user padimd). PLAIN checks the JAAS
# user_<name> entries; SCRAM checks the credentials written at storage format time.
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_padimd="$password";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
}

java_opts=(
    "-Xms64m" "-Xmx$heap"
    # One GC thread and client-compiler-only JIT: the machines have 2 shared cores and
    # a test broker's throughput needs are small; both make startup noticeably faster.
    "-XX:+UseSerialGC" "-XX:TieredStopAtLevel=1"
    "-Djava.awt.headless=true"
    "-Dlog4j.configuration=file:$tools_dir/log4j.properties"
)

# --- commands ---------------------------------------------------------------------

# Returns 0 when ready, 2 when the ports were taken (caller retries), dies otherwise.
start_once() {
    local data=$run_dir/data props=$run_dir/server.properties log=$run_dir/broker.log
    local broker_port controller_port sasl_port="" password="" pid waited_s
    local -a scram=()

    # Every start is a fresh, empty cluster, so tests never see an earlier run's topics.
    # Only ever delete a directory that Kafka itself formatted.
    if [[ -e $data ]]; then
        [[ -f $data/meta.properties ]] \
            || die "$data exists but is not a Kafka data directory; refusing to delete it"
        rm -rf "$data"
    fi

    local ports
    ports=$(free_ports $((sasl ? 3 : 2))) || die "could not pick free ports with $python"
    read -r broker_port controller_port sasl_port <<<"$ports"
    # With --sasl the properties hold the password: readable by this user only.
    rm -f "$props"
    (
        if ((sasl)); then umask 077; fi
        sed -e "s|@BROKER_PORT@|$broker_port|g" \
            -e "s|@CONTROLLER_PORT@|$controller_port|g" \
            -e "s|@LOG_DIRS@|$data|g" \
            "$tools_dir/server.properties.in" >"$props"
    )
    if ((sasl)); then
        password=$(random_password) || die "could not generate a password with $python"
        add_sasl_listener "$sasl_port" "$password" "$props"
        scram=(--add-scram "SCRAM-SHA-256=[name=padimd,password=$password]")
    fi

    if ! java "${java_opts[@]}" -cp "$jars_dir/*" kafka.tools.StorageTool format \
            -t "$(random_cluster_id)" -c "$props" "${scram[@]}" >"$run_dir/format.log" 2>&1; then
        show_log_tail "$run_dir/format.log"
        die "formatting the KRaft storage in $data failed"
    fi

    # stdin from /dev/null and all output to the log: a caller that captures this
    # script's output (pytest's subprocess.run) must not wait on the broker's pipes.
    nohup java "${java_opts[@]}" -cp "$jars_dir/*" kafka.Kafka "$props" \
        >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$run_dir/broker.pid"

    SECONDS=0
    while true; do
        if grep -q "$ready_line" "$log" 2>/dev/null \
                && (exec 3<>"/dev/tcp/127.0.0.1/$broker_port") 2>/dev/null \
                && { [[ -z $sasl_port ]] || (exec 3<>"/dev/tcp/127.0.0.1/$sasl_port") 2>/dev/null; }; then
            break
        fi
        if ! is_broker_pid "$pid"; then
            rm -f "$run_dir/broker.pid"
            if grep -q 'Address already in use' "$log"; then
                say "port $broker_port, $controller_port ${sasl_port:+or $sasl_port }was taken meanwhile; retrying"
                return 2
            fi
            show_log_tail "$log"
            die "the broker exited during startup (log: $log)"
        fi
        waited_s=$SECONDS
        if ((waited_s >= start_timeout_s)); then
            show_log_tail "$log"
            stop_broker
            die "the broker was not ready after ${start_timeout_s}s (log: $log)"
        fi
        sleep 0.2
    done

    if ((sasl)); then
        # Mode 600 from the start, and renamed into place: never half a password.
        (umask 077 && echo "$password" >"$run_dir/sasl_password.tmp")
        mv -f "$run_dir/sasl_password.tmp" "$run_dir/sasl_password"
        echo "127.0.0.1:$sasl_port" >"$run_dir/bootstrap_sasl"
        say "SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256; user padimd, password in" \
            "$run_dir/sasl_password) at 127.0.0.1:$sasl_port"
    fi
    echo "127.0.0.1:$broker_port" >"$run_dir/bootstrap"
    say "ready at 127.0.0.1:$broker_port after ${SECONDS}s (pid $pid, log $log)"
    return 0
}

cmd_start() {
    local pid attempt rc
    mkdir -p "$run_dir"
    run_dir=$(cd "$run_dir" && pwd)
    if pid=$(running_pid); then
        if ((sasl)) && [[ ! -f $run_dir/bootstrap_sasl ]]; then
            die "already running (pid $pid) without --sasl; stop it first"
        fi
        say "already running (pid $pid)"
        cat "$run_dir/bootstrap"
        return 0
    fi
    fetch_jars
    command -v java >/dev/null || die "java not found (scripts/setup.sh installs OpenJDK 17)"
    # Any Python 3 picks the ports; a bare Debian may only have python3.11.
    python=$(command -v python3 || command -v python3.11) \
        || die "no python3 found (used to pick free ports)"
    rm -f "$run_dir/bootstrap" "$run_dir/bootstrap_sasl" "$run_dir/sasl_password"
    for attempt in 1 2 3; do
        rc=0
        start_once || rc=$?
        if ((rc == 0)); then
            cat "$run_dir/bootstrap"
            return 0
        fi
    done
    show_log_tail "$run_dir/broker.log"
    die "could not bind free ports in 3 attempts"
}

stop_broker() {
    local pid waited=0
    if ! pid=$(running_pid); then
        rm -f "$run_dir/broker.pid" "$run_dir/bootstrap" "$run_dir/bootstrap_sasl" \
            "$run_dir/sasl_password"
        return 1
    fi
    kill -TERM "$pid" 2>/dev/null || true
    # A clean KRaft shutdown takes a few seconds; poll in 0.2 s steps.
    while is_broker_pid "$pid" && ((waited < stop_timeout_s * 5)); do
        sleep 0.2
        waited=$((waited + 1))
    done
    if is_broker_pid "$pid"; then
        say "pid $pid still running after ${stop_timeout_s}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        waited=0
        while is_broker_pid "$pid" && ((waited < 50)); do
            sleep 0.2
            waited=$((waited + 1))
        done
    fi
    rm -f "$run_dir/broker.pid" "$run_dir/bootstrap" "$run_dir/bootstrap_sasl" \
        "$run_dir/sasl_password"
    say "stopped (pid $pid)"
}

cmd_stop() {
    [[ -d $run_dir ]] || { say "not running (no $run_dir)"; return 0; }
    run_dir=$(cd "$run_dir" && pwd)
    stop_broker || say "not running"
}

cmd_status() {
    local pid
    if [[ -d $run_dir ]] && pid=$(running_pid); then
        say "running (pid $pid, dir $run_dir)"
        cat "$run_dir/bootstrap"
        return 0
    fi
    say "not running (dir $run_dir)"
    return 3
}

# --- arguments --------------------------------------------------------------------

(($# >= 1)) || usage
command=$1
shift
run_dir=$repo_root/.kafka/run
sasl=0
while (($# > 0)); do
    case $1 in
        --dir) (($# >= 2)) || usage; run_dir=$2; shift 2 ;;
        --dir=*) run_dir=${1#--dir=}; shift ;;
        --sasl) [[ $command == start ]] || usage; sasl=1; shift ;;
        *) usage ;;
    esac
done

case $command in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    fetch) fetch_jars ;;
    *) usage ;;
esac
