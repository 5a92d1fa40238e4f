#!/usr/bin/env bash
# The system services the tests use, from Debian's packages (root): Chromium for the report's
# browser test, and slurm-wlm, slurmdbd, munge and MariaDB for the one-node SLURM cluster
# (cluster/local-slurm.sh). What is already installed is not installed again. `.ci/run`
# calls it; without it those tests skip with the reason.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-system-packages: run as root (apt-get)" >&2; exit 1; }
need=()
command -v chromium >/dev/null || need+=(chromium)
for pair in slurmctld:slurm-wlm slurmd:slurm-wlm slurmdbd:slurmdbd munged:munge mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair##*:}")
done
[ "${#need[@]}" -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "install-system-packages: apt-get install ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
