"""Check fencefs journals against the rules of the TLA+ specs.

    scripts/check-trace JOURNAL...
    scripts/check-trace --merged JOURNAL...   (the hosts' journals of one --etcd namespace)

Replays each journal (``.fencefs/journal.jsonl`` of a backing directory)
event by event, keeping per file the version and epoch the journal implies,
and checks every event against the invariants of specs/Fencing.tla (and the
killed-writer rule, G7). Prints the first event that no behaviour of the
specs allows, as ``JOURNAL:LINE: rule: what``, and exits 1; exits 0 when
every journal passes, 2 when one cannot be read.

Rules (the spec's names):

- VersionMonotonic / NoLostUpdate: a commit (rewrite, append, path commit,
  shared in-place commit) or an adopted foreign write makes the next
  version: new_version = current + 1, and rests on the current version. A
  version that skips or repeats fails.
- OneWinner: no two commits rest on the same version of one file.
- NoStaleApply: a commit or append carries the file's current epoch; one
  resting on an epoch older than a reclaim journaled before it fails.
- EpochMonotonic: a reclaim moves the epoch from the current one to the next.
- KilledNeverCommits (G7): after a writer process is journaled as killed on a
  file, no commit by that process on that file follows.
- DecideConflict / DecideFenced: a conflict names a version other than the
  current one (and the current version is the one the journal implies); a
  fenced refusal names an epoch other than the current one.

- Multi-file commits: the members of a ``txn-intent`` count as commits of
  their files (each resting on the version before the one it installs, under
  the file's current epoch) once its ``txn-commit`` (or a ``txn-recovered``
  rolled forward) is journaled; a delete takes its file away.
- MovedWithItsVersion: a rename onto a free name (a ``rename`` event,
  ``kind`` file or dir) moves the file (or every file below the directory)
  with its version, epoch and history to the new path; the file's version
  there is the one the journal has for its old path, and the commits that
  follow at the new path continue from it (a version that repeats or skips
  there fails as VersionMonotonic, a stale epoch as NoStaleApply). The old
  path holds nothing afterwards.

What the journal does not say is not guessed: a path the journal has not
seen yet, or one that was unlinked or renamed away (a new file may appear
there, at version 0), starts from the first event that names its version.
A commit resting on version 0 starts a new file at its path (a file may go
away unjournaled, deleted behind fencefs's back);
a doctored commit on v0 is therefore not caught. A journaled commit undone
later (a ``failed`` event with its new_version, or a draft the next mount
put away as ``abandoned``) does not count. Several journals are checked
one after the other, each on its own (each is one backing directory).

With ``--merged`` the journals are the hosts' journals of one multi-host
namespace (``BACKING/.fencefs/hosts/*/journal.jsonl``, ``--etcd``): they
are merged into one history as ``fencefs log`` merges them (ordered by the
etcd revision each decision line carries; lines without one by time
between their neighbours, fencefs/etcd/journals.py) and checked as one.
Give every host's journal: a missing one leaves versions skipped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]


class Violation(Exception):
    def __init__(self, line: int, rule: str, what: str) -> None:
        super().__init__(f"{line}: {rule}: {what}")
        self.line, self.rule, self.what = line, rule, what


@dataclass
class Commit:
    line: int
    rests_on: int
    new_version: int
    epoch: int | None
    draft: str | None
    prev: tuple[int | None, int | None]  # (version, epoch) before it


@dataclass
class File:
    version: int | None = None  # None: not known (yet, or any more)
    epoch: int | None = None
    commits: list[Commit] = field(default_factory=list)  # this lifetime's, in order
    killed: set[int] = field(default_factory=set)  # pids journaled as killed here


def read_events(path: str) -> list[tuple[int, Event]]:
    """(line number, event) of every parsable line. A line torn by a kill
    (no newline, or glued to the next line a restarted daemon appended) is
    skipped, keeping the whole event that follows it on the same line."""
    events = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            text = raw.decode("utf-8", "replace").strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except ValueError:
                start = text.rfind('{"ts"', 1)
                try:
                    event = json.loads(text[start:]) if start > 0 else None
                except ValueError:
                    event = None
            if isinstance(event, dict) and "event" in event:
                events.append((number, event))
    return events


def _int(event: Event, key: str) -> int | None:
    value = event.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Checker:
    def __init__(self, merged: bool = False) -> None:
        self.files: dict[str, File] = {}
        self.merged = merged
        self.intents: dict[str, Event] = {}  # multi-file commits not finished yet

    def unplaced(self, e: Event) -> bool:
        """In a merged history, a refusal without an etcd revision was
        decided from its host's own view, whose place among the other hosts'
        decisions is not known exactly: the state it names is not compared
        with the history's (only that it differs from what it rested on)."""
        return self.merged and _int(e, "rev") is None

    def file(self, name: str) -> File:
        return self.files.setdefault(name, File())

    def check(self, line: int, e: Event) -> None:
        kind = e["event"]
        name = str(e.get("file", "?"))
        handler = getattr(self, "on_" + str(kind).replace("-", "_"), None)
        if handler is not None:
            handler(line, name, self.file(name), e)

    # -- commits -----------------------------------------------------------------

    def on_commit(self, line: int, name: str, f: File, e: Event) -> None:
        new = _int(e, "new_version")
        if new is None:
            raise Violation(line, "TypeOK", f"commit of {name} without a new_version")
        rested = _int(e, "version")
        rests_on = rested if rested is not None else new - 1  # path commits: the current
        epoch = _int(e, "epoch")
        pid = _int(e, "pid")
        if pid is not None and pid in f.killed:
            raise Violation(line, "KilledNeverCommits",
                            f"commit of {name} v{new} by pid {pid}, journaled as killed "
                            "on this file before")
        if new != rests_on + 1:
            raise Violation(line, "NoLostUpdate",
                            f"commit of {name} rests on v{rests_on} but makes v{new}")
        if rests_on == 0 and f.version:
            # A file at version 0 is one fencefs never committed: a new file
            # at this path (the old one went away by a rename the journal
            # does not record, or behind fencefs's back).
            self.files[name] = f = File(killed=f.killed)
        for c in f.commits:
            if c.rests_on == rests_on:
                raise Violation(line, "OneWinner",
                                f"commit of {name} v{new} rests on v{rests_on}, as the "
                                f"commit at line {c.line} (v{c.new_version}) did")
        self._next_version(line, name, f, new, "commit")
        self._stale_epoch(line, name, f, epoch, "commit")
        f.commits.append(Commit(line, rests_on, new, epoch, e.get("draft"),
                                (f.version, f.epoch)))
        f.version = new
        if epoch is not None:
            f.epoch = epoch
        if e.get("op") == "unlink":
            self._gone(name)
        source = e.get("source")
        if e.get("op") == "rename" and isinstance(source, str):
            self._gone(source)

    @staticmethod
    def _next_version(line: int, name: str, f: File, new: int, what: str) -> None:
        if f.version is not None and new != f.version + 1:
            how = "repeats" if new <= f.version else "skips"
            raise Violation(line, "VersionMonotonic",
                            f"{what} of {name} makes v{new}: the version {how} "
                            f"(the journal has it at v{f.version})")

    def _stale_epoch(self, line: int, name: str, f: File, epoch: int | None,
                     what: str) -> None:
        if epoch is not None and f.epoch is not None and epoch != f.epoch:
            rule = "NoStaleApply" if epoch < f.epoch else "EpochMonotonic"
            raise Violation(line, rule,
                            f"{what} of {name} under epoch {epoch}, but the file is at "
                            f"epoch {f.epoch} (reclaimed before)")

    def _gone(self, name: str) -> None:
        """The path's file is gone: what appears there next starts afresh."""
        prefix = name + "/"
        for path in [p for p in self.files if p == name or p.startswith(prefix)]:
            self.files[path] = File(killed=self.files[path].killed)

    def on_failed(self, line: int, name: str, f: File, e: Event) -> None:
        """A journaled commit whose install failed: it never happened."""
        new = _int(e, "new_version")
        if new is not None and f.commits and f.commits[-1].new_version == new:
            self._undo(f, len(f.commits) - 1)

    def on_abandoned(self, line: int, name: str, f: File, e: Event) -> None:
        """A draft the next mount found unused: its journaled commit (if any)
        never landed."""
        draft = e.get("draft")
        for i in range(len(f.commits) - 1, -1, -1):
            if draft is not None and f.commits[i].draft == draft:
                self._undo(f, i)
                return

    @staticmethod
    def _undo(f: File, i: int) -> None:
        undone = f.commits.pop(i)
        if i == len(f.commits):  # the latest: the file is back where it was
            f.version, f.epoch = undone.prev

    def on_foreign(self, line: int, name: str, f: File, e: Event) -> None:
        old, new = _int(e, "version"), _int(e, "new_version")
        if old is None or new is None:
            return
        if new != old + 1:
            raise Violation(line, "NoLostUpdate",
                            f"foreign write to {name} moves v{old} to v{new}")
        self._next_version(line, name, f, new, "foreign write")
        epoch = _int(e, "epoch")
        f.commits.append(Commit(line, old, new, epoch, None, (f.version, f.epoch)))
        f.version = new
        if epoch is not None:
            f.epoch = epoch

    def on_rename(self, line: int, name: str, f: File, e: Event) -> None:
        """A move onto a free name: what was at ``source`` (the file, or the
        directory's files) is at ``file`` now, with its version and epoch."""
        source = e.get("source")
        if not isinstance(source, str) or source == name:
            return
        if e.get("kind") == "dir":
            prefix = source + "/"
            moving = {p: name + p[len(source):] for p in self.files if p.startswith(prefix)}
        else:
            moving = {source: name} if source in self.files else {}
            old = self.files.get(source)
            version, epoch = _int(e, "version"), _int(e, "epoch")
            if old is not None and old.version is not None and version is not None \
                    and version != old.version:
                raise Violation(line, "MovedWithItsVersion",
                                f"rename of {source} to {name} at v{version}, but the journal "
                                f"has {source} at v{old.version}")
            if old is not None and old.epoch is not None and epoch is not None \
                    and epoch < old.epoch:
                raise Violation(line, "MovedWithItsVersion",
                                f"rename of {source} to {name} under epoch {epoch}, but the "
                                f"journal has {source} at epoch {old.epoch}")
        self._gone(name)  # a free name: whatever the journal had there left before
        files = {new: self.files.pop(old) for old, new in moving.items()}
        self._gone(source)
        self.files.update(files)
        if e.get("kind") != "dir" and name not in files:
            # moved from a path the journal never saw: what it says is a start
            fresh = self.file(name)
            fresh.version, fresh.epoch = _int(e, "version"), _int(e, "epoch")

    # -- multi-file commits -------------------------------------------------------------

    def on_txn_intent(self, line: int, name: str, f: File, e: Event) -> None:
        self.intents[str(e.get("txn"))] = e

    def on_txn_commit(self, line: int, name: str, f: File, e: Event) -> None:
        intent = self.intents.pop(str(e.get("txn")), None)
        if intent is not None:
            self._members(line, intent)

    def on_txn_recovered(self, line: int, name: str, f: File, e: Event) -> None:
        intent = self.intents.pop(str(e.get("txn")), None)
        if intent is not None and e.get("rolled") == "forward":
            self._members(line, intent)

    def _members(self, line: int, intent: Event) -> None:
        """A multi-file commit that landed: each member is a commit of its
        file (resting on the version before the one it installs), each
        delete takes its file away."""
        for m in intent.get("members") or []:
            if not isinstance(m, dict):
                continue
            file = str(m.get("file"))
            if m.get("delete"):
                self._gone(file)
                continue
            version = _int(m, "version")
            if version is None:
                continue
            self.on_commit(line, file, self.file(file), {
                "event": "commit", "file": file, "pid": intent.get("pid"),
                "version": version - 1, "new_version": version, "epoch": m.get("epoch"),
                "draft": m.get("draft")})

    # -- epochs ----------------------------------------------------------------------

    def on_reclaim(self, line: int, name: str, f: File, e: Event) -> None:
        before, after = _int(e, "epoch"), _int(e, "new_epoch")
        if before is None or after is None:
            return
        if after != before + 1:
            raise Violation(line, "EpochMonotonic",
                            f"reclaim of {name} moves epoch {before} to {after}")
        if f.epoch is not None and before != f.epoch:
            raise Violation(line, "EpochMonotonic",
                            f"reclaim of {name} from epoch {before}, but the journal has it "
                            f"at epoch {f.epoch}")
        version = _int(e, "version")
        if version is not None and f.version is not None and version != f.version:
            raise Violation(line, "VersionMonotonic",
                            f"reclaim of {name} at v{version}, but the journal has it at "
                            f"v{f.version}")
        f.epoch = after
        if version is not None:
            f.version = version

    # -- refusals --------------------------------------------------------------------

    def on_killed(self, line: int, name: str, f: File, e: Event) -> None:
        pid = _int(e, "pid")
        if pid is not None:
            f.killed.add(pid)

    def on_conflict(self, line: int, name: str, f: File, e: Event) -> None:
        rested, current = _int(e, "version"), _int(e, "current_version")
        if rested is None or current is None:
            return
        if f.version is not None and current != f.version and not self.unplaced(e):
            raise Violation(line, "DecideConflict",
                            f"conflict on {name} says the file is at v{current}, but the "
                            f"journal has it at v{f.version}")
        if rested == current:
            raise Violation(line, "DecideConflict",
                            f"conflict on {name} for a claim on v{rested}, which was the "
                            "current version")
        if not self.unplaced(e):
            f.version = current

    def on_fenced(self, line: int, name: str, f: File, e: Event) -> None:
        rested, current = _int(e, "epoch"), _int(e, "current_epoch")
        if rested is None or current is None:
            return
        if f.epoch is not None and current != f.epoch and not self.unplaced(e):
            raise Violation(line, "DecideFenced",
                            f"fenced on {name} says the epoch is {current}, but the journal "
                            f"has it at {f.epoch}")
        if rested == current:
            raise Violation(line, "DecideFenced",
                            f"fenced on {name} for a claim under epoch {rested}, which was "
                            "the current epoch")
        if not self.unplaced(e):
            f.epoch = current


def check_journal(path: str) -> Violation | None:
    checker = Checker()
    for line, event in read_events(path):
        try:
            checker.check(line, event)
        except Violation as v:
            return v
    return None


def check_merged(paths: list[str]) -> tuple[str, Violation] | None:
    """The journals of one multi-host namespace, merged, checked as one
    history: the first violation, with the journal its line is in."""
    from fencefs.etcd.journals import merge

    sources = []
    for path in paths:
        numbered = read_events(path)
        sources.append((path, [{**e, "_line": n} for n, e in numbered]))
    checker = Checker(merged=True)
    for path, _, event in merge(sources):
        try:
            checker.check(int(event["_line"]), event)
        except Violation as v:
            return path, v
    return None


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[0] == "--merged":
        try:
            found = check_merged(argv[1:])
        except OSError as e:
            print(f"check-trace: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
            return 2
        if found is not None:
            path, violation = found
            print(f"{path}:{violation.line}: {violation.rule}: {violation.what}")
            return 1
        print(f"check-trace: {len(argv) - 1} journal(s) of one namespace, merged, follow "
              "the specs' rules")
        return 0
    checked = 0
    for path in argv:
        try:
            violation = check_journal(path)
        except OSError as e:
            print(f"check-trace: cannot read {path}: {e.strerror}", file=sys.stderr)
            return 2
        if violation is not None:
            print(f"{path}:{violation.line}: {violation.rule}: {violation.what}")
            return 1
        checked += 1
    print(f"check-trace: {checked} journal(s) follow the specs' rules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
