#!/usr/bin/env bash
# A local Spark standalone cluster, as users run one: a master and two workers, each its own JVM
# from the pyspark install (SPARK_HOME = the pip package), everything bound to 127.0.0.1.
#
#   scripts/cluster.sh start    # master spark://127.0.0.1:7077, two workers (1 core, 3g, 1 GPU each)
#   scripts/cluster.sh stop     # stops exactly the processes `start` started (pid files)
#   scripts/cluster.sh status
#
# Each worker advertises one GPU through conf/spark/placeholder_gpu.sh: worker 1 address "0",
# worker 2 address "1". Without CUDA these are placeholders: Spark's scheduling is real (one GPU per
# executor, one per scoring task), the scoring falls back to the CPU and says so once per worker.
#
# Settings (environment): CLUSTER_DIR (pid files, logs, worker work dirs; default .cluster/),
# CLUSTER_MASTER_PORT (7077), CLUSTER_UI_PORT (8080; workers use the next two), CLUSTER_WORKER_CORES (1),
# CLUSTER_WORKER_MEMORY (3g), PY (the Python with pyspark; default .venv/bin/python).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
CLUSTER_DIR="${CLUSTER_DIR:-$REPO/.cluster}"
MASTER_PORT="${CLUSTER_MASTER_PORT:-7077}"
UI_PORT="${CLUSTER_UI_PORT:-8080}"
WORKER_CORES="${CLUSTER_WORKER_CORES:-1}"
WORKER_MEMORY="${CLUSTER_WORKER_MEMORY:-3g}"
HOST=127.0.0.1
MASTER_URL="spark://$HOST:$MASTER_PORT"
ROLES=(master worker1 worker2)

die() { echo "cluster: $*" >&2; exit 1; }

alive() {  # pid file -> true when its process still runs the Spark daemon it was started as
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(cat "$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/cmdline" ]] \
        && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "org.apache.spark.deploy."
}

port_busy() { (echo >"/dev/tcp/$HOST/$1") 2>/dev/null; }

wait_for() {  # log file, text, seconds
    local i
    for ((i = 0; i < $3 * 2; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}

start_daemon() {  # role, class, args...
    local role="$1" class="$2"
    shift 2
    # setsid: the daemon outlives this shell and a Ctrl-C in it; spark-class execs java, so $! is the JVM.
    setsid "$SPARK_HOME/bin/spark-class" "$class" "$@" >"$CLUSTER_DIR/$role.log" 2>&1 </dev/null &
    echo $! >"$CLUSTER_DIR/$role.pid"
}

start() {
    for role in "${ROLES[@]}"; do
        alive "$CLUSTER_DIR/$role.pid" && die "a cluster is already running from $CLUSTER_DIR ($role pid $(cat "$CLUSTER_DIR/$role.pid")); run 'make cluster-stop' first"
    done
    for port in "$MASTER_PORT" "$UI_PORT" $((UI_PORT + 1)) $((UI_PORT + 2)); do
        port_busy "$port" && die "port $HOST:$port is in use (another Spark master?); set CLUSTER_MASTER_PORT / CLUSTER_UI_PORT"
    done
    [[ -x "$PY" ]] || die "no Python at $PY (run 'make install' or set PY)"
    SPARK_HOME="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
    export SPARK_HOME
    mkdir -p "$CLUSTER_DIR"
    rm -f "$CLUSTER_DIR"/*.pid

    # Bind every socket (RPC, block manager, web UI) to the loopback interface only.
    export SPARK_LOCAL_IP=$HOST SPARK_PUBLIC_DNS=$HOST SPARK_DAEMON_MEMORY=512m
    # Code reaches executors through --py-files only, never through this shell's PYTHONPATH.
    unset PYTHONPATH

    # No REST submission server: only the RPC port takes jobs.
    SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false" start_daemon master org.apache.spark.deploy.master.Master \
        --host $HOST --port "$MASTER_PORT" --webui-port "$UI_PORT"
    wait_for "$CLUSTER_DIR/master.log" "I have been elected leader" 60 \
        || { stop; die "master did not start; see $CLUSTER_DIR/master.log"; }

    for n in 1 2; do
        local work="$CLUSTER_DIR/work$n"
        mkdir -p "$work"
        ATTENTION_INFLUENCE_PLACEHOLDER_GPU=$((n - 1)) \
        SPARK_WORKER_OPTS="-Dspark.worker.resource.gpu.amount=1 -Dspark.worker.resource.gpu.discoveryScript=$REPO/conf/spark/placeholder_gpu.sh" \
            start_daemon "worker$n" org.apache.spark.deploy.worker.Worker \
            --host $HOST --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" --work-dir "$work" \
            --webui-port $((UI_PORT + n)) "$MASTER_URL"
    done
    for n in 1 2; do
        wait_for "$CLUSTER_DIR/worker$n.log" "Successfully registered with master" 90 \
            || { stop; die "worker $n did not register; see $CLUSTER_DIR/worker$n.log"; }
    done
    echo "cluster: master $MASTER_URL (UI http://$HOST:$UI_PORT), 2 workers x $WORKER_CORES core, $WORKER_MEMORY, 1 GPU; state in $CLUSTER_DIR"
}

stop() {
    local stopped=0
    for role in worker2 worker1 master; do
        local pidfile="$CLUSTER_DIR/$role.pid"
        if alive "$pidfile"; then
            local pid
            pid="$(cat "$pidfile")"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
            stopped=$((stopped + 1))
        fi
        rm -f "$pidfile"
    done
    echo "cluster: stopped $stopped process(es) from $CLUSTER_DIR"
}

status() {
    for role in "${ROLES[@]}"; do
        if alive "$CLUSTER_DIR/$role.pid"; then echo "$role: running (pid $(cat "$CLUSTER_DIR/$role.pid"))"
        else echo "$role: not running"; fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
