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

DEMO_NAME=lost-update-demo
. "$(dirname "${BASH_SOURCE[0]}")/demo-common.sh"  # MOUNT_ARG, PYTHON, fencefs, say, check, demo_setup

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
demo_setup fencefs-lost-update-demo

# -- 1: plain directory --------------------------------------------------------
banner "Lost update on a plain directory ($WORK/plain)"
race "$WORK/plain" plain
PLAIN_RC=$RACE_RC
[ "$PLAIN_RC" -eq 3 ] && say "     Nobody got an error; the loss shows up much later as \"the agent forgot\"."

# -- 2: fencefs ----------------------------------------------------------------
banner "Lost update on fencefs ($MNT)"
rejected_before=$(rejected_listing)
journal_before=$(journal_length memory.json)
race "$MNT" fencefs
FENCE_RC=$RACE_RC
show "getfattr -d -m user.fencefs memory.json"
(cd "$MNT" && getfattr -d -m user.fencefs memory.json 2>&1 | sed '/^$/d; s/^/    /')
new_rejected=$(new_rejected_since "$rejected_before" 'conflict\.agent:agent-b\.memory\.json')
show_rejected "  agent-b's refused first version is kept:" "$new_rejected"
show_journal_since memory.json "$journal_before"

# -- verdict -------------------------------------------------------------------
new_journal=$(fencefs log "$MNT" "$MNT/memory.json" --json | tail -n +"$((journal_before + 1))")
banner "Checks (fencefs half)"
check "agent-b got EAGAIN once (got it $EAGAINS time(s))" test "$EAGAINS" -eq 1
check "memory.json holds both agents' keys" test "$FENCE_RC" -eq 0
check "agent-b's refused bytes are under .fencefs/rejected/" test -n "$new_rejected"
check "the journal records the conflict" grep -qE '"event": *"conflict"' <<<"$new_journal"
verdict "lost-update-demo: PASS (no update was lost)" "lost-update-demo: FAIL"
