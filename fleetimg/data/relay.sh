# fleetimg relay: runs on a node, reads the compressed image stream on stdin, loads it and
# passes the same bytes on to this node's children over SSH, each of which runs this script.
#
# Invoked as: bash -c "$(echo SCRIPT_B64 | base64 -d)" fleetimg-relay ME SCRIPT_B64 TABLE_B64
# TABLE (text, base64 so no shell quoting is ever nested):
#   A key PATH | A agent      how this node logs in to its children
#   K <known_hosts line>      host keys of the downstream nodes (checked strictly)
#   N id parent user@host port LOAD_B64
# A child that fails is dropped (tee -p) so this node and its other children still finish;
# the workstation verifies every node afterwards and re-feeds the ones that did not.
set -u
me=$1
script=$2
table=$3
dir=$(mktemp -d /tmp/fleetimg-relay.XXXXXX) || exit 70
trap 'rm -rf "$dir"' EXIT
printf '%s' "$table" | base64 -d > "$dir/table" || exit 70
grep '^K ' "$dir/table" | cut -c3- > "$dir/known_hosts"
auth=""
mode=$(awk '$1 == "A" { print $2; exit }' "$dir/table")
if [ "$mode" = "key" ]; then
    keyfile=$(awk '$1 == "A" { print $3; exit }' "$dir/table")
    keyfile=${keyfile/#\~/$HOME}
    auth="-i $keyfile -o IdentitiesOnly=yes"
elif [ "$mode" = "agent" ]; then
    auth="-A"
fi
ssh_opts="-o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$dir/known_hosts
 -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=10 -o ServerAliveInterval=5
 -o ServerAliveCountMax=3 -o LogLevel=ERROR $auth"

if [ "${FLEETIMG_RELAY_CHECK:-}" = 1 ]; then
    # Pre-flight: can this node log in to each of its children? Nothing is sent.
    rc=0
    while read -r tag id parent dest port load; do
        [ "$tag" = N ] && [ "$parent" = "$me" ] || continue
        # shellcheck disable=SC2086
        if out=$(ssh $ssh_opts -p "$port" "$dest" true 2>&1 </dev/null); then
            echo "fleetimg-relay: edge $id ok"
        else
            echo "fleetimg-relay: edge $id failed: $(echo "$out" | tail -n 1)"
            rc=1
        fi
    done < "$dir/table"
    exit $rc
fi

load=""
fifos=()
pids=()
ids=()
while read -r tag id parent dest port load_b64; do
    [ "$tag" = N ] || continue
    if [ "$id" = "$me" ]; then
        load=$(printf '%s' "$load_b64" | base64 -d)
    elif [ "$parent" = "$me" ]; then
        mkfifo "$dir/$id.fifo"
        # shellcheck disable=SC2086
        ssh $ssh_opts -p "$port" "$dest" \
            "bash -c \"\$(echo $script | base64 -d)\" fleetimg-relay $id $script $table" \
            < "$dir/$id.fifo" > "$dir/$id.out" 2>&1 &
        fifos+=("$dir/$id.fifo")
        pids+=($!)
        ids+=("$id")
    fi
done < "$dir/table"
if [ -z "$load" ]; then
    echo "fleetimg-relay: $me is not in the relay table" >&2
    exit 70
fi

if [ ${#fifos[@]} -eq 0 ]; then
    sh -c "$load"
    rc=$?
else
    tee -p "${fifos[@]}" | sh -c "$load"
    rc=$?
fi
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    child=$?
    # The workstation reads these lines to say which hop broke: first the reports from
    # further down, then this hop's own exit status and the last thing it printed.
    out="$dir/${ids[$i]}.out"
    grep '^fleetimg-relay: ' "$out" >&2
    last=$(grep -v '^fleetimg-relay: ' "$out" | tail -n 1)
    echo "fleetimg-relay: ${ids[$i]} exit $child $last" >&2
done
exit $rc
