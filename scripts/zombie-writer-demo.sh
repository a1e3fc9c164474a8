#!/usr/bin/env bash
# The zombie writer, twice: on a plain directory, then on fencefs.
#
#   scripts/zombie-writer-demo.sh [MOUNTPOINT]
#
# agent-a opens plan.md for writing, writes part of its plan and stalls
# (SIGSTOP). The orchestrator gives up on it: it reclaims plan.md (on fencefs)
# and hands the task to agent-b, which writes and commits its plan. Then
# agent-a wakes up and finishes its write and its close().
#   plain directory: agent-a's stale plan overwrites agent-b's.
#   fencefs:         agent-a gets ESTALE; plan.md keeps agent-b's plan, and
#                    agent-a's bytes are kept under .fencefs/rejected/.
#
# MOUNTPOINT: a fencefs mount to use; without it the script mounts a fresh
# one in a temporary directory and unmounts it at the end. Deterministic and
# offline. Exit 0 only if the fencefs half behaved as the contract says.
# Environment: PYTHON (default .venv/bin/python of this repository).
set -euo pipefail

DEMO_NAME=zombie-demo
. "$(dirname "${BASH_SOURCE[0]}")/demo-common.sh"  # MOUNT_ARG, PYTHON, fencefs, say, check, demo_setup

ESTALE=116
AGENT_A=agent-a
AGENT_B=agent-b
HEADER='# Plan (shared by the fleet)

'
INITIAL="${HEADER}1. [ ] collect the data        (owner: agent-a)
"
ZOMBIE_REST='1. [x] collect the data        (agent-a, before it stalled)
2. [ ] clean the data          (agent-a)
3. [ ] train the model         (agent-a)
4. [ ] write the report        (agent-a)
'
ZOMBIE_FULL="${HEADER}${ZOMBIE_REST}"
AGENT_B_PLAN="${HEADER}1. [x] collect the data        (agent-b took over)
2. [x] clean the data          (agent-b)
"

# A writer: open for writing (O_TRUNC), write, close; each errno is shown.
# With --stall it writes its first part, stops itself (SIGSTOP) and, once
# continued, writes the rest. Exit status: 0, or the first errno it got.
WRITER_PY='
import errno, os, signal, sys
args = sys.argv[1:]
stall = args[0] == "--stall"
if stall:
    args = args[1:]
who, path, first, rest = args[0], args[1], args[2].encode(), args[3].encode()
name = os.path.basename(path)
failed = []
def attempt(what, fn):
    try:
        fn()
        return True
    except OSError as e:
        failed.append(e.errno)
        print(f"  {who}: {what} -> {errno.errorcode.get(e.errno, e.errno)} ({e.strerror})",
              flush=True)
        return False
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
if attempt("write()", lambda: os.write(fd, first)) and stall:
    print(f"  {who}: opened {name}, wrote part 1 of its plan ... and stalls (SIGSTOP)",
          flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    print(f"  {who}: wakes up, writes the rest of its (stale) plan and closes", flush=True)
if rest and not failed:
    attempt("write()", lambda: os.write(fd, rest))
if attempt("close()", lambda: os.close(fd)) and not failed:
    print(f"  {who}: write and close() succeeded", flush=True)
sys.exit(failed[0] if failed else 0)
'

# A reader: the new agent reads the plan before it rewrites it.
READ_PY='
import sys
with open(sys.argv[1], "rb") as f:
    f.read()
'

wait_stopped() {  # wait until process $1 is stopped (state T)
    local pid=$1 i state
    for i in $(seq 1 200); do
        state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1 || true)
        [ "$state" = T ] && return 0
        [ -z "$state" ] && return 1
        sleep 0.05
    done
    return 1
}

reset_plan() {  # $1 = directory
    FENCEFS_AGENT=setup "$PYTHON" -c "$WRITER_PY" setup "$1/plan.md" "$INITIAL" ""
}

show_content() {
    say "  plan.md now holds:"
    sed 's/^/    | /' "$1/plan.md"
}

show_claims() {  # $1 = dir
    show "getfattr -d -m user.fencefs plan.md"
    (cd "$1" && getfattr -d -m user.fencefs plan.md 2>&1 | sed '/^$/d; s/^/    /')
}

# Runs the scenario in directory $1; $2 = plain|fencefs. Sets ZOMBIE_RC, B_RC.
scenario() {
    local dir=$1 kind=$2 zpid
    reset_plan "$dir" >/dev/null
    say "  plan.md starts as the initial plan (owner: agent-a)."
    FENCEFS_AGENT=$AGENT_A "$PYTHON" -c "$WRITER_PY" --stall "$AGENT_A" "$dir/plan.md" \
        "$HEADER" "$ZOMBIE_REST" &
    zpid=$!
    ZPID=$zpid
    if ! wait_stopped "$zpid"; then
        say "  agent-a did not reach its stall point" >&2
        kill -KILL "$zpid" 2>/dev/null || true
        return 1
    fi
    if [ "$kind" = fencefs ]; then
        say "  agent-a holds a write claim while it is stalled:"
        show_claims "$dir"
        say "  The orchestrator gives up on agent-a and reclaims plan.md:"
        show "fencefs reclaim plan.md"
        (cd "$dir" && FENCEFS_AGENT=orchestrator fencefs reclaim plan.md) | sed 's/^/    /'
    else
        say "  The orchestrator gives up on agent-a (on a plain directory there is"
        say "  nothing to reclaim) and hands the task to agent-b."
    fi
    say "  agent-b reads plan.md and writes its own plan:"
    FENCEFS_AGENT=$AGENT_B "$PYTHON" -c "$READ_PY" "$dir/plan.md"
    B_RC=0
    FENCEFS_AGENT=$AGENT_B "$PYTHON" -c "$WRITER_PY" "$AGENT_B" "$dir/plan.md" \
        "$AGENT_B_PLAN" "" || B_RC=$?
    say "  Much later agent-a is continued (SIGCONT):"
    kill -CONT "$zpid"
    ZOMBIE_RC=0
    wait "$zpid" || ZOMBIE_RC=$?
    ZPID=
    show_content "$dir"
}

# -- setup: a plain directory, and a fencefs mount -----------------------------
ZPID=
demo_before_cleanup() {  # a writer still stalled: end it, it holds the mount busy
    if [ -n "$ZPID" ]; then
        kill -KILL "$ZPID" 2>/dev/null || true
        wait "$ZPID" 2>/dev/null || true
    fi
}
demo_setup fencefs-zombie-demo

# -- 1: plain directory --------------------------------------------------------
banner "Zombie writer on a plain directory ($WORK/plain)"
scenario "$WORK/plain" plain
if cmp -s "$WORK/plain/plan.md" <(printf '%s' "$ZOMBIE_FULL"); then
    say "  => STALE COMMIT LANDED: plan.md holds agent-a's stale plan; agent-b's work is gone,"
    say "     and nobody got an error."
else
    say "  => plan.md holds neither clean version: the stale write corrupted it."
fi

# -- 2: fencefs ----------------------------------------------------------------
banner "Zombie writer on fencefs ($MNT)"
rejected_before=$(rejected_listing)
journal_before=$(journal_length plan.md)
scenario "$MNT" fencefs
show_claims "$MNT"
new_rejected=$(new_rejected_since "$rejected_before" "fenced\.agent:$AGENT_A\.plan\.md")
show_rejected "  agent-a's refused bytes are kept:" "$new_rejected"
show_journal_since plan.md "$journal_before"

# -- verdict -------------------------------------------------------------------
same_content() { cmp -s "$1" <(printf '%s' "$2"); }
new_journal=$(fencefs log "$MNT" "$MNT/plan.md" --json | tail -n +"$((journal_before + 1))")
banner "Checks (fencefs half)"
check "agent-b's commit succeeded" test "$B_RC" -eq 0
check "agent-a got ESTALE (its exit status: $ZOMBIE_RC)" test "$ZOMBIE_RC" -eq "$ESTALE"
check "plan.md holds agent-b's plan" same_content "$MNT/plan.md" "$AGENT_B_PLAN"
check "agent-a's bytes are under .fencefs/rejected/" test -n "$new_rejected"
check "the journal records the reclaim" grep -qE '"event": *"reclaim"' <<<"$new_journal"
check "the journal records the fenced write" grep -qE '"event": *"fenced"' <<<"$new_journal"
verdict "zombie-writer-demo: PASS (the zombie was fenced)" "zombie-writer-demo: FAIL"
