#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for costack's SLURM test and as a how-to.
#
#   cluster/local-slurm.sh start    install Debian's slurm packages if absent, configure and
#                                   start munge, MariaDB, slurmdbd, slurmctld and slurmd (root)
#   cluster/local-slurm.sh status   sinfo, squeue and the accounts
#   cluster/local-slurm.sh stop     stop exactly the daemons it started (by pid), remove its folder
#
# Everything lives under $COSTACK_SLURM_DIR (default /tmp/costack-slurm): the configuration
# (etc/slurm.conf: point clients at it with `export SLURM_CONF=$COSTACK_SLURM_DIR/etc/slurm.conf`),
# logs, spool, the accounting database. One partition, `debug`, with this host's cores and
# memory; accounting through slurmdbd (the executor plugin checks accounts with sacctmgr and
# job states with sacct), account `costack` for root. It is a test harness, not part of a run.
set -euo pipefail

DIR="${COSTACK_SLURM_DIR:-/tmp/costack-slurm}"
HOST="$(hostname -s)"
DB_PORT="${COSTACK_SLURM_DB_PORT:-3316}"
export SLURM_CONF="$DIR/etc/slurm.conf"

need_root() { [ "$(id -u)" = 0 ] || { echo "local-slurm: run as root" >&2; exit 1; }; }

install() {
    local missing=()
    for cmd in slurmctld slurmd slurmdbd munged mariadbd sacctmgr; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "local-slurm: installing slurm-wlm slurmdbd munge mariadb-server" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            slurm-wlm slurmdbd munge mariadb-server >/dev/null
    fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local t="$1" what="$2"; shift 2
    for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "local-slurm: $what did not come up; see $DIR/log" >&2
    return 1
}

configure() {
    mkdir -p "$DIR"/{etc,log,run,spool/ctld,spool/d,mysql,munge}
    chmod 700 "$DIR/munge"
    dd if=/dev/urandom bs=1 count=1024 of="$DIR/munge/munge.key" status=none
    chmod 400 "$DIR/munge/munge.key"
    local cpus mem
    cpus="$(nproc)"
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat > "$DIR/etc/slurm.conf" <<CONF
ClusterName=costack
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
JobCompType=jobcomp/none
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
    cat > "$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=costack
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$DIR/etc/slurmdbd.conf"
}

start() {
    need_root
    if [ -f "$DIR/pids" ]; then echo "local-slurm: already started ($DIR)" >&2; exit 1; fi
    if [ -S /run/munge/munge.socket.2 ] && pgrep -x munged >/dev/null; then
        echo "local-slurm: a munged is already running on this host; stop it first" >&2; exit 1
    fi
    install
    configure
    : > "$DIR/pids"
    # munged on its standard socket: Slurm's clients (sacctmgr's slurmdbd connection among
    # them) do not all honour another AuthInfo socket
    mkdir -p /run/munge
    munged --socket=/run/munge/munge.socket.2 --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/seed" --force
    wait_for 10 munged test -s "$DIR/run/munged.pid"
    echo "munged $(cat "$DIR/run/munged.pid")" >> "$DIR/pids"

    mariadb-install-db --datadir="$DIR/mysql" --user=root --auth-root-authentication-method=normal \
        >"$DIR/log/mariadb-install.log" 2>&1
    mariadbd --datadir="$DIR/mysql" --user=root --port="$DB_PORT" --bind-address=127.0.0.1 \
        --socket="$DIR/run/mysql.sock" --pid-file="$DIR/run/mariadbd.pid" \
        --log-error="$DIR/log/mariadb.log" --skip-grant-tables=0 &
    wait_for 60 mariadb mariadb --socket="$DIR/run/mysql.sock" -uroot -e "select 1"
    echo "mariadbd $(cat "$DIR/run/mariadbd.pid")" >> "$DIR/pids"
    mariadb --socket="$DIR/run/mysql.sock" -uroot <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'costack';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'costack';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

    slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 60 slurmdbd sacctmgr -n list cluster
    echo "slurmdbd $(cat "$DIR/run/slurmdbd.pid")" >> "$DIR/pids"
    sacctmgr -i add cluster costack >/dev/null
    sacctmgr -i add account costack description=costack organization=costack >/dev/null
    sacctmgr -i add user root account=costack defaultaccount=costack >/dev/null

    # jobs' own srun and sbatch look for /etc/slurm/slurm.conf (Slurm sets SLURM_CONF for
    # them): point it at this folder's configuration while the cluster runs
    if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$SLURM_CONF" ]; then
        echo "local-slurm: /etc/slurm/slurm.conf exists and is not ours; not touching it" >&2
    else
        mkdir -p /etc/slurm && ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
        echo "link /etc/slurm/slurm.conf" >> "$DIR/pids"
    fi
    slurmctld -f "$SLURM_CONF"
    wait_for 60 slurmctld scontrol ping
    echo "slurmctld $(cat "$DIR/run/slurmctld.pid")" >> "$DIR/pids"
    slurmd -f "$SLURM_CONF"
    wait_for 60 slurmd sh -c "sinfo -h -o %T | grep -Eq 'idle|mixed|alloc'"
    echo "slurmd $(cat "$DIR/run/slurmd.pid")" >> "$DIR/pids"
    echo "local-slurm: up; export SLURM_CONF=$SLURM_CONF"
    sinfo
}

status() {
    sinfo && squeue && sacctmgr -n list association format=cluster,account,user,partition
}

stop() {
    need_root
    [ -f "$DIR/pids" ] || { echo "local-slurm: not started ($DIR)" >&2; exit 0; }
    # only the pids this script recorded: all asked to stop at once (each daemon takes about
    # 2 s to exit; one after another made the stop 10 s), killed if still there after 10 s
    local live=()
    while read -r name pid; do
        if [ "$name" = link ]; then
            [ "$(readlink "$pid")" = "$SLURM_CONF" ] && rm -f "$pid"
            continue
        fi
        if kill -0 "$pid" 2>/dev/null; then kill "$pid" && live+=("$pid"); fi
        echo "local-slurm: stopping $name ($pid)"
    done < <(tac "$DIR/pids")
    for _ in $(seq 50); do
        local left=()
        for pid in "${live[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
        live=("${left[@]}")
        [ "${#live[@]}" -eq 0 ] && break
        sleep 0.2
    done
    for pid in "${live[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    echo "local-slurm: stopped"
    rm -rf "$DIR"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
