#!/usr/bin/env bash
# Start a one-node Ray cluster on this machine (loopback), run `rlkit train` against it, stop it.
#
#   launch/local_cluster.sh [rlkit train arguments...]
#   RAY_PORT=6390 RAY_NUM_CPUS=4 launch/local_cluster.sh --max_steps 20
#
# It is the smallest real "cluster" run: the driver joins through --cluster.address instead of
# starting Ray in-process. On several machines do the same by hand (see launch/README.md).
set -euo pipefail
port=${RAY_PORT:-6390}
cpus=${RAY_NUM_CPUS:-4}
# a one-machine cluster: keep every Ray server on loopback (Ray's switch for single-machine clusters;
# without it Ray rewrites 127.0.0.1 into the machine's network address)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Ray's token authentication, with a token made for this cluster alone and handed to the job
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$(python3 -c "import secrets; print(secrets.token_hex(32))")}
export RAY_AUTH_TOKEN
temp_dir=$(mktemp -d /tmp/rlkit-ray.XXXXXX)  # short: Ray's socket paths have a length limit

ray start --head --node-ip-address 127.0.0.1 --port "$port" --num-cpus "$cpus" \
    --include-dashboard false --disable-usage-stats --temp-dir "$temp_dir" >/dev/null
# Stop this cluster only. `ray stop` would kill every Ray process on the machine, other users' and
# other jobs' in-process clusters included; every process of this one names $temp_dir on its command line.
stop_cluster() {
    pkill -TERM -f -- "$temp_dir" 2>/dev/null || true
    for _ in $(seq 50); do pgrep -f -- "$temp_dir" >/dev/null || break; sleep 0.2; done
    pkill -KILL -f -- "$temp_dir" 2>/dev/null || true
    rm -rf "$temp_dir"
}
trap stop_cluster EXIT

rlkit train --cluster.address "127.0.0.1:$port" "$@"
