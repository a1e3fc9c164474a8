# Shared by scripts/lost-update-demo.sh and scripts/zombie-writer-demo.sh;
# sourced, not run:
#
#   DEMO_NAME=some-demo   # the prefix of this script's error messages
#   . "$(dirname "${BASH_SOURCE[0]}")/demo-common.sh"
#
# On sourcing: takes the optional MOUNTPOINT argument ($1) into MOUNT_ARG,
# changes to the repository, resolves PYTHON (default .venv/bin/python) and
# exits 2 if it is missing. Defines fencefs, say, banner, show, check and
# demo_setup (see each). Set -euo pipefail is the caller's.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MOUNT_ARG=${1:-}
[ -n "$MOUNT_ARG" ] && MOUNT_ARG=$(realpath "$MOUNT_ARG")
cd "$REPO"
PYTHON=${PYTHON:-.venv/bin/python}
case $PYTHON in
    */*) [ -x "$PYTHON" ] && PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;;
    *) PYTHON=$(command -v "$PYTHON" || echo "$PYTHON") ;;
esac
[ -x "$PYTHON" ] || { echo "$DEMO_NAME: $PYTHON not found: run scripts/setup first" >&2; exit 2; }
fencefs() { "$PYTHON" -m fencefs.cli "$@"; }

say() { printf '%s\n' "$*"; }
banner() { printf '\n=== %s ===\n' "$*"; }
show() { printf '  $ %s\n' "$*"; }

# demo_setup PREFIX: a plain directory $WORK/plain under a fresh temporary
# directory WORK=/tmp/PREFIX.XXXXXX, and a fencefs mount MNT: MOUNT_ARG if
# given (exit 2 if it is not a fencefs mount), else a fresh mount of
# $WORK/backing on $WORK/mnt, unmounted at exit. The exit trap runs
# demo_before_cleanup first if the caller defines it, then unmounts its own
# mount and removes WORK.
cleanup() {
    if declare -F demo_before_cleanup >/dev/null; then
        demo_before_cleanup
    fi
    if [ -n "$OWN_MOUNT" ] && mountpoint -q "$MNT" 2>/dev/null; then
        fencefs unmount "$MNT" >/dev/null 2>&1 || fusermount3 -u -z "$MNT" 2>/dev/null || true
    fi
    if ! mountpoint -q "$WORK/mnt" 2>/dev/null; then
        rm -rf "$WORK"
    fi
}
demo_setup() {
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    MNT=$MOUNT_ARG
    OWN_MOUNT=
    trap cleanup EXIT
    mkdir -p "$WORK/plain"
    if [ -z "$MNT" ]; then
        mkdir -p "$WORK/backing" "$WORK/mnt"
        MNT=$WORK/mnt
        fencefs mount "$WORK/backing" "$MNT" >/dev/null
        OWN_MOUNT=1
    elif ! grep -q " $MNT fuse.fencefs " /proc/mounts; then
        echo "$DEMO_NAME: $MNT is not a fencefs mount" >&2
        exit 2
    fi
}

ok=1
check() {  # check WHAT COMMAND...: runs COMMAND, reports WHAT; a failure sets ok=0
    local what=$1
    shift
    if "$@"; then say "  ok:     $what"; else say "  FAILED: $what"; ok=0; fi
}

# Before and after a scenario on the mount $MNT:
#   rejected_listing: the sorted names under $MNT/.fencefs/rejected/
#   journal_length FILE: how many journal entries FILE (under $MNT) has
#   new_rejected_since LISTING PATTERN: the names under .fencefs/rejected/
#       not in LISTING that match the grep PATTERN
#   show_rejected HEADLINE NAMES: if NAMES, lists them and shows their bytes
#   show_journal_since FILE SKIP: FILE's journal, without its first SKIP entries
rejected_listing() { ls "$MNT/.fencefs/rejected" 2>/dev/null | sort || true; }
journal_length() { fencefs log "$MNT" "$MNT/$1" --json | wc -l; }
new_rejected_since() {
    comm -13 <(printf '%s\n' "$1") <(ls "$MNT/.fencefs/rejected" | sort) | grep "$2" || true
}
show_rejected() {
    [ -n "$2" ] || return 0
    say "$1"
    show "ls .fencefs/rejected/"
    printf '%s\n' "$2" | sed 's/^/    /'
    printf '%s\n' "$2" | while read -r f; do
        sed 's/^/    | /' "$MNT/.fencefs/rejected/$f"
    done
}
show_journal_since() {
    say "  The journal:"
    show "fencefs log $MNT $1"
    fencefs log "$MNT" "$MNT/$1" | awk -v skip="$2" 'NR == 1 || NR > skip + 1' | sed 's/^/    /'
}

# verdict PASS-LINE FAIL-LINE: after the checks, exit 0 saying PASS-LINE if
# all passed, else exit 1 saying FAIL-LINE.
verdict() {
    if [ "$ok" -eq 1 ]; then
        say "$1"
        exit 0
    fi
    say "$2"
    exit 1
}
