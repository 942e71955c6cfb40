#!/usr/bin/env bash
# Two hosts on one machine: network namespaces joined by a veth pair, each "host" with its own
# hostname (UTS namespace), /etc/hosts and TMPDIR; mpirun (through launch/mpirun) runs on host A
# and starts host B's Open MPI daemon through an rsh agent that enters B's namespace (what ssh
# does on a cluster); ranks talk over TCP only (btl tcp,self on the veth subnet). Checks:
#   1. W=2 (one rank per host, ep=2) and W=4 (two per host, ep=4) give the single-process losses
#      (compare_losses.py: CE and aux, 1e-5 relative, as mpi.train_parity).
#   2. SIGTERM to launch/mpirun: the ranks checkpoint after the current step, the checkpoint is
#      committed with every rank's file, and the job exits 143.
#   3. Host A's link goes down (ip link set down) mid-training: the job ends within 60 s with the
#      watchdog's message (parallel.step_timeout=8 here), or Open MPI's when its daemon keepalive
#      notices first (a cut between steps, where the watchdog allows parallel.timeout), and no
#      moekit process is left on either host within 60 s.
# Skips (exit 77) without root, `ip netns`, unshare or Open MPI. Every wait is bounded; the
# namespaces, their processes and files are removed on every exit path.
#   multihost.sh MOEKIT SOURCE_DIR
set -uo pipefail
moekit=$1; src=$2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
for b in ip unshare mpirun setsid pkill; do command -v "$b" >/dev/null || skip "$b not found"; done
mpirun --version 2>&1 | grep -q "Open MPI" || skip "mpirun is not Open MPI"
tag="mk$$"
nsa="${tag}a"; nsb="${tag}b"
tmp=$(mktemp -d /tmp/moekit_hosts.XXXXXX)
cleanup() {
  for ns in "$nsa" "$nsb"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  sleep 0.2
  ip netns del "$nsa" 2>/dev/null; ip netns del "$nsb" 2>/dev/null
  rm -rf "/etc/netns/$nsa" "/etc/netns/$nsb" "$tmp"
}
trap cleanup EXIT
ip netns add "$nsa" 2>/dev/null || skip "ip netns add failed (no permission for network namespaces?)"
ip netns add "$nsb" || exit 1
net="10.213.$(( $$ % 250 + 1 ))"
ip link add "${tag}va" type veth peer name "${tag}vb" || skip "cannot create a veth pair"
ip link set "${tag}va" netns "$nsa" && ip link set "${tag}vb" netns "$nsb" || exit 1
ip -n "$nsa" addr add "$net.1/24" dev "${tag}va" && ip -n "$nsb" addr add "$net.2/24" dev "${tag}vb" || exit 1
for ns in "$nsa" "$nsb"; do
  ip -n "$ns" link set lo up
  mkdir -p "/etc/netns/$ns"   # `ip netns exec` mounts these over /etc
  printf '127.0.0.1 localhost\n%s.1 hosta\n%s.2 hostb\n' "$net" "$net" >"/etc/netns/$ns/hosts"
done
ip -n "$nsa" link set "${tag}va" up && ip -n "$nsb" link set "${tag}vb" up || exit 1
mkdir -p "$tmp/hosta" "$tmp/hostb"
# on HOST CMD...: runs CMD inside HOST's namespace with HOST as hostname and its own TMPDIR.
cat >"$tmp/on" <<EOF
#!/bin/bash
host=\$1; shift
case "\$host" in hosta) ns=$nsa ;; hostb) ns=$nsb ;; *) echo "no host \$host" >&2; exit 1 ;; esac
exec ip netns exec "\$ns" unshare --uts sh -c 'hostname "\$0"; export TMPDIR=$tmp/\$0; exec "\$@"' "\$host" "\$@"
EOF
# Open MPI's rsh agent: AGENT HOST COMMAND-WORDS (joined and run by a shell, as ssh does).
printf '#!/bin/bash\nhost=$1; shift\nexec %s "$host" sh -c "$*"\n' "$tmp/on" >"$tmp/agent"
chmod +x "$tmp/on" "$tmp/agent"
printf 'hosta slots=2\nhostb slots=2\n' >"$tmp/hostfile"
mpi=(--mpi-arg --mca --mpi-arg plm_rsh_agent --mpi-arg "$tmp/agent"
     --mpi-arg --mca --mpi-arg btl --mpi-arg tcp,self
     --mpi-arg --mca --mpi-arg btl_tcp_if_include --mpi-arg "$net.0/24"
     --mpi-arg --mca --mpi-arg oob_tcp_if_include --mpi-arg "$net.0/24"
     --mpi-arg --mca --mpi-arg mpi_yield_when_idle --mpi-arg 1)  # two "hosts" share 2 cores

cd "$src"
export OMP_NUM_THREADS=1 MOEKIT_BIN="$moekit"
common=(--config configs/train/tiny-moe.yaml --set "data.train=[$tmp/data/synth]" --set data.synth_tokens=100000
        --set train.peak_flops=1e11 --set train.seq_len=64 --set train.global_batch_size=8
        --set train.micro_batch_size=2 --set train.eval_every=0 --set train.log_every=1 --set loss.aux=hf_pooled)
fail=0
bad() { echo "FAIL - $*"; fail=1; }
launch() {  # RANKS_PER_NODE NAME [moekit train args...]: launch/mpirun on host A, output in NAME.log
  # (exec: run in the background, the job's pid is timeout's, which passes a SIGTERM on to
  # launch/mpirun: `on` execs it)
  local per=$1 name=$2; shift 2
  exec timeout 150 "$tmp/on" hosta launch/mpirun --hostfile "$tmp/hostfile" -N "$per" -t 1 --grace 30 "${mpi[@]}" \
    train "${common[@]}" --set run_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
}
steps_done() { [ -f "$tmp/$1/metrics.jsonl" ] && wc -l <"$tmp/$1/metrics.jsonl" || echo 0; }
wait_steps() {  # NAME N: until NAME has logged N steps (at most 60 s)
  for _ in $(seq 1 300); do [ "$(steps_done "$1")" -ge "$2" ] && return 0; sleep 0.2; done
  return 1
}

# ---- 1. parity ---------------------------------------------------------------------------
"$moekit" train "${common[@]}" --set train.steps=10 --set run_dir="$tmp/w1" >"$tmp/w1.log" 2>&1 ||
  { echo "FAIL - reference run"; tail -5 "$tmp/w1.log"; exit 1; }
for layout in "1 2 2" "2 4 4"; do
  read -r per w ep <<<"$layout"
  (launch "$per" "w${w}e$ep" --set train.steps=10 --set parallel.ep="$ep")
  rc=$?
  if [ $rc -ne 0 ]; then bad "W=$w over 2 hosts exited $rc"; tail -5 "$tmp/w${w}e$ep.log"; continue; fi
  grep -q "rank 0/$w\]" "$tmp/w${w}e$ep.log" || bad "W=$w did not run $w ranks"
  python3 "$here/compare_losses.py" "$tmp/w1" "$tmp/w${w}e$ep" "W=$w ep=$ep over 2 hosts (TCP)" --last 10 || fail=1
done

# ---- 2. SIGTERM: checkpoint, then exit 143 ----------------------------------------------------
launch 2 term --set train.steps=2000 --set parallel.ep=2 &
pid=$!
if wait_steps term 3; then
  kill -TERM "$pid"
  start=$SECONDS
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && { bad "SIGTERM: still running after 60 s"; kill -KILL "$pid"; }
  wait "$pid"; rc=$?
  last=$(steps_done term)
  ckpt="$tmp/term/checkpoints/$(cat "$tmp/term/checkpoints/latest" 2>/dev/null)"
  files=$(ls "$ckpt"/rank_*.h5 2>/dev/null | wc -l)
  if [ $rc -eq 143 ] && [ -f "$ckpt/meta.json" ] && [ "$files" = 4 ] &&
     [ "$(basename "$ckpt")" = "$(printf 'step_%08d' "$last")" ]; then
    echo "ok   - SIGTERM to launch/mpirun: exit 143 after $((SECONDS - start)) s, checkpoint $(basename "$ckpt") with 4 rank files"
  else
    bad "SIGTERM: exit $rc, latest '$(basename "$ckpt")' ($files rank files), last logged step $last"
    grep -v "info rank" "$tmp/term.log" | tail -5
  fi
else
  bad "SIGTERM run did not start"; tail -5 "$tmp/term.log"; kill -KILL "$pid" 2>/dev/null
fi
for p in $(ip netns pids "$nsb"); do kill -KILL "$p" 2>/dev/null; done  # daemons left from the run

# ---- 3. a link goes down: the watchdog ends the job ------------------------------------------
launch 1 cut --set train.steps=2000 --set parallel.ep=2 --set parallel.step_timeout=8 &
pid=$!
if wait_steps cut 3; then
  ip -n "$nsa" link set "${tag}va" down
  start=$SECONDS
  for _ in $(seq 1 180); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  took=$((SECONDS - start))
  kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; took=">90"; }
  wait "$pid"; rc=$?
  left=""
  for _ in $(seq 1 120); do
    left=$(for ns in "$nsa" "$nsb"; do ip netns pids "$ns"; done | xargs -r ps -o comm= -p 2>/dev/null | grep -c moekit)
    [ "$left" = 0 ] && break; sleep 0.5
  done
  gone=$((SECONDS - start))
  # Whoever sees the cut first ends the job with its message: the watchdog (a collective past
  # its deadline) or Open MPI's daemon keepalive (launch/mpirun sets 10 + 3 x 5 s).
  msg=$(grep -m1 -e "watchdog: step [0-9]*: .* has not finished after" \
    -e "has lost communication with a remote daemon" "$tmp/cut.log")
  if [[ "$took" =~ ^[0-9]+$ ]] && [ "$took" -lt 60 ] && [ $rc -ne 0 ] && [ -n "$msg" ] && [ "$left" = 0 ] && [ "$gone" -lt 60 ]; then
    echo "ok   - link down after step $(steps_done cut): the job ended in ${took} s with exit $rc, no rank left after ${gone} s"
    echo "       ${msg:0:300}"
  else
    bad "link down: job ended after ${took} s with exit $rc, $left moekit processes left after ${gone} s, message: '${msg:0:200}'"
    grep -v "info rank" "$tmp/cut.log" | tail -8
  fi
else
  bad "link-cut run did not start"; tail -5 "$tmp/cut.log"; kill -KILL "$pid" 2>/dev/null
fi
exit $fail
