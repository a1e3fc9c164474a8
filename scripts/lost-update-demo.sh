#!/usr/bin/env bash
# The concurrent lost update, twice: on a plain directory, then on fencefs.
#
#   scripts/lost-update-demo.sh [MOUNTPOINT]
#
# agent-a and agent-b share memory.json. Both read it, both add their own key,
# both open it for writing and write their new version before either closes.
# agent-a closes (commits) first, then agent-b.
#   plain directory: both succeed; agent-a's key is gone.
#   fencefs:         agent-b's close() fails with EAGAIN (its bytes are kept
#                    under .fencefs/rejected/); it re-reads, recomputes and
#                    writes again; both keys are in memory.json.
#
# MOUNTPOINT: a fencefs mount to use; without it the script mounts a fresh
# one in a temporary directory and unmounts it at the end. Deterministic and
# offline: the two agents are separate processes, stepped in a fixed order.
# Exit 0 only if the fencefs half behaved as the contract says.
# Environment: PYTHON (default .venv/bin/python of this repository).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MOUNT_ARG=${1:-}
[ -n "$MOUNT_ARG" ] && MOUNT_ARG=$(realpath "$MOUNT_ARG")
cd "$REPO"
PYTHON=${PYTHON:-.venv/bin/python}
case $PYTHON in
    */*) [ -x "$PYTHON" ] && PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;;
    *) PYTHON=$(command -v "$PYTHON" || echo "$PYTHON") ;;
esac
[ -x "$PYTHON" ] || { echo "lost-update-demo: $PYTHON not found: run scripts/setup first" >&2; exit 2; }
fencefs() { "$PYTHON" -m fencefs.cli "$@"; }

# The race, in Python: an orchestrator steps two agent processes through
# read / open / write / close over pipes, so the interleaving is always the
# same. Exit status: 0 if memory.json ends with both agents' keys, 3 if one
# was lost. Prints "eagain=N" lines the shell checks.
RACE_PY='
import errno, json, os, subprocess, sys

AGENT = r"""
import errno, json, os, sys
name, path = sys.argv[1], sys.argv[2]
doc, fd = None, None
def note():
    return "note from " + name
def reply(text):
    print(text, flush=True)
for line in sys.stdin:
    cmd = line.strip()
    try:
        if cmd == "read":
            with open(path, "rb") as f:
                doc = json.loads(f.read())
            reply("read memory.json: keys " + ", ".join(sorted(doc)))
        elif cmd == "open":
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            reply("open(memory.json, O_WRONLY|O_TRUNC)")
        elif cmd == "write":
            doc[name] = note()
            os.write(fd, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
            reply("write() its version, which adds key " + name)
        elif cmd == "close":
            closing, fd = fd, None
            os.close(closing)
            reply("close() succeeded")
        else:
            reply("error unknown command " + cmd)
    except OSError as e:
        code = errno.errorcode.get(e.errno, str(e.errno))
        reply(f"error {code} {cmd}() -> {code} ({e.strerror})")
"""

path = sys.argv[1]
agents = {}
for name in ("agent-a", "agent-b"):
    env = dict(os.environ, FENCEFS_AGENT=name)
    agents[name] = subprocess.Popen(
        [sys.executable, "-c", AGENT, name, path], env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
eagain = 0

def step(name, cmd):
    global eagain
    proc = agents[name]
    proc.stdin.write(cmd + "\n")
    proc.stdin.flush()
    answer = proc.stdout.readline().strip()
    if answer.startswith("error "):
        code, text = answer[6:].split(" ", 1)
        print(f"  {name}: {text}", flush=True)
        eagain += code == "EAGAIN"
        return code
    print(f"  {name}: {answer}", flush=True)
    return None

step("agent-a", "read")
step("agent-b", "read")
step("agent-a", "open")
step("agent-b", "open")
step("agent-a", "write")
step("agent-b", "write")
step("agent-a", "close")
error = step("agent-b", "close")
for attempt in range(3):
    if error != "EAGAIN":
        break
    print("  agent-b: conflict: the file moved on; it reads again, recomputes, writes again",
          flush=True)
    error = step("agent-b", "read") or step("agent-b", "open") or step("agent-b", "write") \
        or step("agent-b", "close")
for proc in agents.values():
    proc.stdin.close()
    proc.wait()
with open(path, "rb") as f:
    final = json.loads(f.read())
print("  memory.json now holds:")
for line in json.dumps(final, indent=2, sort_keys=True).splitlines():
    print("    | " + line)
print(f"eagain={eagain}")
missing = [k for k in ("agent-a", "agent-b") if k not in final]
if missing:
    print(f"  => LOST UPDATE: both writes succeeded, and the key {missing[0]} is gone.")
    sys.exit(3)
print("  => both keys are present: nothing was lost.")
'
INITIAL='{
  "project": "fencefs demo",
  "facts": ["the tests run with pytest"]
}
'

say() { printf '%s\n' "$*"; }
banner() { printf '\n=== %s ===\n' "$*"; }
show() { printf '  $ %s\n' "$*"; }

reset_memory() {  # $1 = directory: memory.json back to its initial content
    FENCEFS_AGENT=setup "$PYTHON" -c '
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, sys.argv[2].encode())
os.close(fd)
' "$1/memory.json" "$INITIAL"
}

race() {  # $1 = directory, $2 = plain|fencefs; sets RACE_RC, EAGAINS
    local out
    reset_memory "$1"
    say "  memory.json starts with the keys: facts, project."
    RACE_RC=0
    out=$("$PYTHON" -c "$RACE_PY" "$1/memory.json" "$2") || RACE_RC=$?
    printf '%s\n' "$out" | grep -v '^eagain='
    EAGAINS=$(printf '%s\n' "$out" | sed -n 's/^eagain=//p')
    EAGAINS=${EAGAINS:-0}
}

# -- setup: a plain directory, and a fencefs mount -----------------------------
WORK=$(mktemp -d /tmp/fencefs-lost-update-demo.XXXXXX)
MNT=$MOUNT_ARG
OWN_MOUNT=
cleanup() {
    if [ -n "$OWN_MOUNT" ] && mountpoint -q "$MNT" 2>/dev/null; then
        fencefs unmount "$MNT" >/dev/null 2>&1 || fusermount3 -u -z "$MNT" 2>/dev/null || true
    fi
    if ! mountpoint -q "$WORK/mnt" 2>/dev/null; then
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
mkdir -p "$WORK/plain"
if [ -z "$MNT" ]; then
    mkdir -p "$WORK/backing" "$WORK/mnt"
    MNT=$WORK/mnt
    fencefs mount "$WORK/backing" "$MNT" >/dev/null
    OWN_MOUNT=1
elif ! grep -q " $MNT fuse.fencefs " /proc/mounts; then
    echo "lost-update-demo: $MNT is not a fencefs mount" >&2
    exit 2
fi

# -- 1: plain directory --------------------------------------------------------
banner "Lost update on a plain directory ($WORK/plain)"
race "$WORK/plain" plain
PLAIN_RC=$RACE_RC
[ "$PLAIN_RC" -eq 3 ] && say "     Nobody got an error; the loss shows up much later as \"the agent forgot\"."

# -- 2: fencefs ----------------------------------------------------------------
banner "Lost update on fencefs ($MNT)"
rejected_before=$(ls "$MNT/.fencefs/rejected" 2>/dev/null | sort || true)
journal_before=$(fencefs log "$MNT" "$MNT/memory.json" --json | wc -l)
race "$MNT" fencefs
FENCE_RC=$RACE_RC
show "getfattr -d -m user.fencefs memory.json"
(cd "$MNT" && getfattr -d -m user.fencefs memory.json 2>&1 | sed '/^$/d; s/^/    /')
new_rejected=$(comm -13 <(printf '%s\n' "$rejected_before") \
    <(ls "$MNT/.fencefs/rejected" | sort) | grep 'conflict\.agent:agent-b\.memory\.json' || true)
if [ -n "$new_rejected" ]; then
    say "  agent-b's refused first version is kept:"
    show "ls .fencefs/rejected/"
    printf '%s\n' "$new_rejected" | sed 's/^/    /'
    printf '%s\n' "$new_rejected" | while read -r f; do
        sed 's/^/    | /' "$MNT/.fencefs/rejected/$f"
    done
fi
say "  The journal:"
show "fencefs log $MNT memory.json"
fencefs log "$MNT" "$MNT/memory.json" \
    | awk -v skip="$journal_before" 'NR == 1 || NR > skip + 1' | sed 's/^/    /'

# -- verdict -------------------------------------------------------------------
ok=1
check() {  # check WHAT COMMAND...: runs COMMAND, reports WHAT
    local what=$1
    shift
    if "$@"; then say "  ok:     $what"; else say "  FAILED: $what"; ok=0; fi
}
new_journal=$(fencefs log "$MNT" "$MNT/memory.json" --json | tail -n +"$((journal_before + 1))")
banner "Checks (fencefs half)"
check "agent-b got EAGAIN once (got it $EAGAINS time(s))" test "$EAGAINS" -eq 1
check "memory.json holds both agents' keys" test "$FENCE_RC" -eq 0
check "agent-b's refused bytes are under .fencefs/rejected/" test -n "$new_rejected"
check "the journal records the conflict" grep -qE '"event": *"conflict"' <<<"$new_journal"
if [ "$ok" -eq 1 ]; then
    say "lost-update-demo: PASS (no update was lost)"
    exit 0
fi
say "lost-update-demo: FAIL"
exit 1
