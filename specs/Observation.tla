---------------------------- MODULE Observation ----------------------------
(***************************************************************************)
(* Observation claims: unmodified read-modify-write is judged against what *)
(* the program read.  Mirrors fencefs/core/coordinator.py:                 *)
(*   Observe    = Coordinator.observe     (a read records the (version,    *)
(*                epoch) served to the reading identity; modelled as open  *)
(*                and read in one step, so what is served is the current   *)
(*                version; a read through an older handle records an older *)
(*                version, which only makes later checks stricter)         *)
(*   OpenWrite  = Coordinator.open_write  (mode "rewrite" = O_TRUNC: the   *)
(*                open-time check rests it on the identity's observation;  *)
(*                "update" = open without O_TRUNC, starts from the current *)
(*                content; "append" = O_APPEND: only the epoch guard)      *)
(*   Commit     = Coordinator.commit      (close/fsync of the handle)      *)
(*   CommitPath = Coordinator.commit_path (rename over, truncate, unlink:  *)
(*                rests on the observation, or blind on the current one)   *)
(*   Release    = Coordinator.release                                      *)
(*   Reclaim    = Coordinator.reclaim                                      *)
(*   Crash/Restart only with WithCrash (see gaps/): observations are       *)
(*                volatile, what the program read is not.                  *)
(*                                                                         *)
(* Two identities suffice for every counterexample here (one reads, one   *)
(* commits in between); three make the state space ~100x larger.          *)
(*                                                                         *)
(* Ghost state: know[i][f] is what identity i really read (the version and *)
(* the appends its copy contains); its next rewrite is computed from it.   *)
(* content[f] is the set of appends (named by the version they created)    *)
(* that the file's content includes or that a writer knowingly replaced.   *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets

CONSTANTS
    Ids,          \* identities (FENCEFS_AGENT or process)
    Files,
    None,         \* model value: no observation / no handle
    MaxVersion,   \* bounds, see Bounds (CONSTRAINT)
    MaxEpoch,
    WithCrash     \* BOOLEAN: model Crash/Restart (gaps/ only)

VARIABLES
    up,       \* daemon running
    ver,      \* FileState.version
    ep,       \* FileState.epoch
    content,  \* appends the current content includes (ghost)
    obs,      \* obs[i][f]: FileState.readers[i] = [version, epoch], or None
    know,     \* know[i][f]: what i read = [version, appends], or None (ghost)
    h,        \* h[i]: i's open write handle (its claim + ghost data), or None
    last,     \* history: last[f] is the record of the latest commit to f
              \* (every commit is checked in the state it creates)
    appended, \* history: appended[f], the appends ever committed to f
    appendRefused \* history: an append's commit was refused as a conflict

vars == <<up, ver, ep, content, obs, know, h, last, appended, appendRefused>>

Modes == {"rewrite", "update", "append"}

TypeOK ==
    /\ up \in BOOLEAN
    /\ ver \in [Files -> Nat] /\ ep \in [Files -> Nat]
    /\ content \in [Files -> SUBSET Nat]
    /\ obs \in [Ids -> [Files -> [version : Nat, epoch : Nat] \cup {None}]]
    /\ know \in [Ids -> [Files -> [version : Nat, appends : SUBSET Nat] \cup {None}]]
    /\ \A i \in Ids : h[i] = None \/ h[i].mode \in Modes

(***************************************************************************)
(* decide(file, claim): EpochGuard, then VersionGuard unless an append.    *)
(***************************************************************************)
EpochGuard(f, c)   == c.epoch = ep[f]
VersionGuard(f, c) == c.append \/ c.version = ver[f]

Decide(f, c) ==
    IF ~EpochGuard(f, c) THEN "fenced"
    ELSE IF ~VersionGuard(f, c) THEN "conflict"
    ELSE "ok"

\* An observation as a claim (Kind.READ; never an append).
AsClaim(o) == [version |-> o.version, epoch |-> o.epoch, append |-> FALSE]

\* The open-time check of open_write for a rewrite (O_TRUNC): refused
\* (Conflict or Fenced) if what the identity last read is already stale.
OpenCheck(i, f) ==
    IF obs[i][f] = None THEN TRUE ELSE Decide(f, AsClaim(obs[i][f])) = "ok"

Init ==
    /\ up = TRUE
    /\ ver = [f \in Files |-> 0] /\ ep = [f \in Files |-> 0]
    /\ content = [f \in Files |-> {}]
    /\ obs = [i \in Ids |-> [f \in Files |-> None]]
    /\ know = [i \in Ids |-> [f \in Files |-> None]]
    /\ h = [i \in Ids |-> None]
    /\ last = [f \in Files |-> None]
    /\ appended = [f \in Files |-> {}]
    /\ appendRefused = FALSE

Observe(i, f) ==
    /\ up
    /\ obs' = [obs EXCEPT ![i][f] = [version |-> ver[f], epoch |-> ep[f]]]
    /\ know' = [know EXCEPT ![i][f] = [version |-> ver[f], appends |-> content[f]]]
    /\ UNCHANGED <<up, ver, ep, content, h, last, appended, appendRefused>>

(***************************************************************************)
(* open_write.  The claim rests on the current (version, epoch); for a     *)
(* rewrite that is sound only because OpenCheck refused it when the        *)
(* identity's observation was stale.  base/data: the version and appends   *)
(* the bytes written through this handle are computed from.               *)
(***************************************************************************)
Handle(f, mode, base, data, informed) ==
    [file |-> f, mode |-> mode, version |-> ver[f], epoch |-> ep[f],
     append |-> mode = "append", base |-> base, data |-> data,
     informed |-> informed]

OpenWriteWith(i, f, mode, Check(_, _)) ==
    /\ up
    /\ h[i] = None
    /\ \/ /\ mode = "rewrite"
          /\ Check(i, f)
          /\ h' = [h EXCEPT ![i] =
                     IF know[i][f] # None    \* computed from what i read
                     THEN Handle(f, mode, know[i][f].version, know[i][f].appends, TRUE)
                     ELSE Handle(f, mode, ver[f], content[f], FALSE)]   \* blind
          /\ UNCHANGED <<know, obs>>
       \/ /\ mode = "update"
          \* The handle serves the version current at open, and the program
          \* reads it through the handle: a read, so it records an
          \* observation of that served version (operations.read calls
          \* observe(..., *handle.served)).  Open and read as one step.
          /\ h' = [h EXCEPT ![i] = Handle(f, mode, ver[f], content[f], TRUE)]
          /\ obs' = [obs EXCEPT ![i][f] = [version |-> ver[f], epoch |-> ep[f]]]
          /\ know' = [know EXCEPT ![i][f] = [version |-> ver[f], appends |-> content[f]]]
       \/ /\ mode = "append"
          /\ h' = [h EXCEPT ![i] = Handle(f, mode, ver[f], content[f], FALSE)]
          /\ UNCHANGED <<know, obs>>
    /\ UNCHANGED <<up, ver, ep, content, last, appended, appendRefused>>

OpenWrite(i, f, mode) == OpenWriteWith(i, f, mode, OpenCheck)

(***************************************************************************)
(* What the identity's observation becomes after its own commit.  It may   *)
(* move to the new version only if it rested on the version replaced:      *)
(* an append does not rest on anything, so after an append over a file     *)
(* that moved, the identity still knows only its old read.  Nor after an  *)
(* append over a file reclaimed since the read: the observation was        *)
(* revoked (its epoch is superseded), and an append re-reads nothing, so   *)
(* it stays revoked (the identity's next rewrite is fenced).               *)
(***************************************************************************)
ObsAfterCommit(i, f, c) ==
    IF obs[i][f] # None /\ (~c.append \/ obs[i][f] = [version |-> ver[f], epoch |-> ep[f]])
    THEN [version |-> ver[f] + 1, epoch |-> ep[f]]
    ELSE obs[i][f]

\* The new content an append installs: appended to the content current at
\* commit time (not to a copy taken at open).
AppendedContent(f, c) == content[f] \cup {ver[f] + 1}

CommitWith(i, D(_, _), Obs(_, _, _), App(_, _)) ==
    LET c == h[i]
        f == c.file
        new == ver[f] + 1
        data == IF c.append THEN App(f, c) ELSE c.data
    IN
    /\ up
    /\ c # None
    /\ h' = [h EXCEPT ![i] = None]     \* the handle is closed either way
    /\ IF D(f, c) = "ok"
       THEN /\ ver' = [ver EXCEPT ![f] = new]
            /\ content' = [content EXCEPT ![f] = data]
            /\ obs' = [obs EXCEPT ![i][f] = Obs(i, f, c)]
            /\ know' = IF know[i][f] # None /\ know[i][f].version = ver[f]
                       THEN [know EXCEPT ![i][f] = [version |-> new, appends |-> data]]
                       ELSE know
            /\ last' = [last EXCEPT ![f] =
                           [kind |-> c.mode, informed |-> c.informed,
                            base |-> c.base, replaced |-> ver[f],
                            epoch |-> c.epoch, current |-> ep[f]]]
            /\ appended' = IF c.append
                           THEN [appended EXCEPT ![f] = appended[f] \cup {new}]
                           ELSE appended
            /\ UNCHANGED <<up, ep, appendRefused>>
       ELSE /\ appendRefused' = (appendRefused \/ (c.append /\ D(f, c) = "conflict"))
            /\ UNCHANGED <<up, ver, ep, content, obs, know, last, appended>>

Commit(i) == CommitWith(i, Decide, ObsAfterCommit, AppendedContent)

(***************************************************************************)
(* commit_path: a rename over the path (or truncate, unlink) by identity  *)
(* i.  It rests on i's observation, or on the current version when i never *)
(* read the path (a blind write).  The new content is computed from what   *)
(* i read.  A refused commit_path changes nothing (the rename fails).      *)
(***************************************************************************)
CommitPathWith(i, f, Base(_, _)) ==
    LET b == Base(i, f)
        new == ver[f] + 1
        data == IF know[i][f] # None THEN know[i][f].appends ELSE content[f]
        from == IF know[i][f] # None THEN know[i][f].version ELSE ver[f]
    IN
    /\ up
    /\ Decide(f, b) = "ok"
    /\ ver' = [ver EXCEPT ![f] = new]
    /\ content' = [content EXCEPT ![f] = data]
    /\ obs' = IF obs[i][f] # None
              THEN [obs EXCEPT ![i][f].version = new]
              ELSE obs
    /\ know' = IF know[i][f] # None
               THEN [know EXCEPT ![i][f] = [version |-> new, appends |-> data]]
               ELSE know
    /\ last' = [last EXCEPT ![f] =
                   [kind |-> "path", informed |-> know[i][f] # None,
                    base |-> from, replaced |-> ver[f],
                    epoch |-> b.epoch, current |-> ep[f]]]
    /\ UNCHANGED <<up, ep, h, appended, appendRefused>>

PathBase(i, f) ==
    IF obs[i][f] # None THEN AsClaim(obs[i][f])
    ELSE [version |-> ver[f], epoch |-> ep[f], append |-> FALSE]

CommitPath(i, f) == CommitPathWith(i, f, PathBase)

Release(i) ==
    /\ up
    /\ h[i] # None
    /\ h' = [h EXCEPT ![i] = None]
    /\ UNCHANGED <<up, ver, ep, content, obs, know, last, appended, appendRefused>>

Reclaim(f) ==
    /\ up
    /\ ep' = [ep EXCEPT ![f] = ep[f] + 1]
    /\ UNCHANGED <<up, ver, content, obs, know, h, last, appended, appendRefused>>

\* Claims (write handles and observations) are volatile; what a program
\* read stays in the program.  Version, epoch, content are persisted.
Crash ==
    /\ WithCrash
    /\ up
    /\ up' = FALSE
    /\ obs' = [i \in Ids |-> [f \in Files |-> None]]
    /\ h' = [i \in Ids |-> None]
    /\ UNCHANGED <<ver, ep, content, know, last, appended, appendRefused>>

Restart ==
    /\ ~up
    /\ up' = TRUE
    /\ UNCHANGED <<ver, ep, content, obs, know, h, last, appended, appendRefused>>

\* Everything but the actions a mutant replaces.
Other ==
    \/ \E i \in Ids, f \in Files : Observe(i, f)
    \/ \E i \in Ids : Release(i)
    \/ \E f \in Files : Reclaim(f)
    \/ Crash
    \/ Restart

Next ==
    \/ Other
    \/ \E i \in Ids, f \in Files, m \in Modes : OpenWrite(i, f, m)
    \/ \E i \in Ids : Commit(i)
    \/ \E i \in Ids, f \in Files : CommitPath(i, f)

Spec == Init /\ [][Next]_vars

Bounds == \A f \in Files : ver[f] <= MaxVersion /\ ep[f] <= MaxEpoch

(***************************************************************************)
(* Invariants                                                              *)
(***************************************************************************)

\* No identity's commit rests on a version older than the file's when it
\* lands: the version its new content was computed from is the version it
\* replaces.  (Appends are computed from nothing; see AppendsNeverLost.)
NoLostUpdate ==
    \A f \in Files : (last[f] # None /\ last[f].kind # "append")
                        => last[f].base = last[f].replaced

\* No commit (of any kind, appends included) under a superseded epoch.
NoStaleApply ==
    \A f \in Files : last[f] # None => last[f].epoch = last[f].current

\* Every append that was committed is in the file's content.
AppendsNeverLost == \A f \in Files : appended[f] \subseteq content[f]

\* Appends always land: no append's commit is ever refused as a conflict
\* (only a reclaim can stop it, with Fenced).
AppendsAlwaysLand == ~appendRefused

\* The core's observation never claims more than the identity read.
ObservationNotAhead ==
    \A i \in Ids, f \in Files :
        obs[i][f] # None => know[i][f] # None /\ obs[i][f].version <= know[i][f].version

(***************************************************************************)
(* Reachability: must be VIOLATED (reach/Observation_reach_*.cfg).         *)
(***************************************************************************)
LastIs(f, kind) == last[f] # None /\ last[f].kind = kind

\* An informed rewrite (O_TRUNC after a read) lands on a file that was
\* committed to before the read.
NeverRewriteCommit ==
    ~\E f \in Files : LastIs(f, "rewrite") /\ last[f].informed /\ last[f].base > 0
\* An informed rename-over lands.
NeverPathCommit == ~\E f \in Files : LastIs(f, "path") /\ last[f].informed
\* An append lands on a file that moved since the append was opened.
NeverAppendOverMovedFile ==
    ~\E f \in Files : LastIs(f, "append") /\ last[f].base < last[f].replaced
\* The open-time check refuses a rewrite (stale observation: EAGAIN).
NeverOpenConflict ==
    ~\E i \in Ids, f \in Files :
        up /\ h[i] = None /\ obs[i][f] # None
        /\ Decide(f, AsClaim(obs[i][f])) = "conflict"
\* The open-time check refuses a rewrite after a reclaim (ESTALE).
NeverOpenFenced ==
    ~\E i \in Ids, f \in Files :
        up /\ h[i] = None /\ obs[i][f] # None
        /\ Decide(f, AsClaim(obs[i][f])) = "fenced"
\* A rewrite handle whose commit would be refused as a conflict.
NeverCommitConflict ==
    ~\E i \in Ids : up /\ h[i] # None /\ ~h[i].append /\ Decide(h[i].file, h[i]) = "conflict"
=============================================================================
