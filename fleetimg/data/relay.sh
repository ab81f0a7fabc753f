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

# tee writes each block to every output in turn, so an output that takes nothing holds
# this node's load and every other child still. The watchdog cuts off an output that has
# taken no byte for $stall seconds while tee waits on it: this node's own load, or a child
# that is not itself reporting a stall further down (a child waiting on its own child says
# so every second on its stderr, which lands in $dir/ID.out here; a frozen one says
# nothing). tee -p then goes on with the others. Where tee waits is read from /proc (the
# write syscall and its file descriptor).
stall=8
# Progress: every second, the bytes this node has received (tee's rchar) when they changed,
# and the new progress lines of the nodes below (complete lines of each child's output), so
# the workstation shows every relayed node's own progress as it goes.
declare -A seen
progress() {
    local tee=$1 id n got
    got=$(awk '/^rchar/ { print $2 }' "/proc/$tee/io" 2>/dev/null) || return 0
    if [ -n "$got" ] && [ "$got" != "${reported:-}" ]; then
        reported=$got
        echo "fleetimg-relay: $me received $got" >&2
    fi
    for id in "${ids[@]}"; do
        n=$(wc -l < "$dir/$id.out" 2>/dev/null) || continue
        if [ "$n" -gt "${seen[$id]:-0}" ]; then
            sed -n "$((${seen[$id]:-0} + 1)),${n}p" "$dir/$id.out" \
                | grep -a '^fleetimg-relay: [^ ]* received [0-9]*$' >&2
            seen[$id]=$n
        fi
    done
}

watchdog() {
    local tee=$1 write since=0 last="" now nr fd target name i size heard=0 osize=-1
    case $(uname -m) in aarch64|arm64) write=64 ;; x86_64|amd64) write=1 ;; *) return 0 ;; esac
    while kill -0 "$tee" 2>/dev/null; do
        sleep 1
        progress "$tee"
        now=$(awk '/^wchar/ { print $2 }' "/proc/$tee/io" 2>/dev/null) || return 0
        read -r nr fd _ < "/proc/$tee/syscall" 2>/dev/null || return 0
        if [ "$nr" != "$write" ] || [ "$now" != "$last" ]; then
            last=$now
            since=0
            osize=-1
            continue
        fi
        since=$((since + 1))
        target=$(readlink "/proc/$tee/fd/$((fd))") || continue
        name=$(basename "$target" .fifo)
        echo "fleetimg-relay: $me waiting on $name for $since s" >&2
        if [ "$name" != self ]; then
            size=$(stat -c %s "$dir/$name.out" 2>/dev/null || echo 0)
            if [ "$size" != "$osize" ]; then
                osize=$size
                heard=$since
            fi
            # Still talking: it is cutting off something below it.
            [ $((since - heard)) -ge 3 ] || continue
        fi
        [ "$since" -ge "$stall" ] || continue
        since=0
        osize=-1
        if [ "$name" = self ]; then
            echo "fleetimg-relay: $me cut off by itself: its load took nothing for $stall s" >&2
            pkill -P "$load_pid" 2>/dev/null
            kill "$load_pid" 2>/dev/null
        else
            for i in "${!ids[@]}"; do
                [ "${ids[$i]}" = "$name" ] && kill "${pids[$i]}" 2>/dev/null
            done
            echo "fleetimg-relay: $name cut off by $me: took nothing for $stall s" >&2
        fi
    done
}

# A leaf goes through tee too: its watchdog reports its progress and cuts off its own load
# when that takes nothing, as on every relay.
mkfifo "$dir/self.fifo"
sh -c "$load" < "$dir/self.fifo" &
load_pid=$!
# An explicit redirection: a background job would otherwise read /dev/null.
tee -p "$dir/self.fifo" "${fifos[@]}" <&0 > /dev/null &
tee_pid=$!
watchdog "$tee_pid" &
watchdog_pid=$!
wait "$tee_pid"
wait "$load_pid"
rc=$?
kill "$watchdog_pid" 2>/dev/null
wait "$watchdog_pid" 2>/dev/null
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    child=$?
    # The workstation reads these lines to say which hop broke: first the reports from
    # further down, then this hop's own exit status and the last thing it printed.
    out="$dir/${ids[$i]}.out"
    grep '^fleetimg-relay: ' "$out" | grep -v ' waiting on \| received ' >&2
    last=$(grep -v '^fleetimg-relay: ' "$out" | tail -n 1)
    echo "fleetimg-relay: ${ids[$i]} exit $child $last" >&2
done
exit $rc
