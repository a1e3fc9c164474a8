------------------------------ MODULE Fencing ------------------------------
(***************************************************************************)
(* Write handles, versions, epochs, reclamation, crash and restart.        *)
(*                                                                         *)
(* Mirrors fencefs/core/coordinator.py.  Action names are the core's       *)
(* method names:                                                           *)
(*   OpenWrite    = Coordinator.open_write (a non-O_TRUNC open: the claim  *)
(*                  rests on the current version and epoch; rewrites that  *)
(*                  rest on an observation are in Observation.tla)         *)
(*   Commit       = Coordinator.commit   (guard: decide())                 *)
(*   Release      = Coordinator.release                                    *)
(*   Reclaim      = Coordinator.reclaim  (persist, then bump)              *)
(*   AdoptForeign = Coordinator.adopt_foreign                              *)
(*   Crash / Restart: the daemon (or the machine) dies; Restart re-adopts  *)
(*                  every file from what is persisted (Coordinator.adopt). *)
(*                                                                         *)
(* Persistence, as implemented by fencefs/store:                           *)
(*  - a commit installs a draft that already carries (version, epoch) in   *)
(*    its state attribute and renames it over the file: content, version  *)
(*    and epoch become durable in one atomic step;                         *)
(*  - reclaim fsyncs the new epoch BEFORE the in-memory epoch changes;     *)
(*  - a crash loses every claim and draft (volatile) and keeps the         *)
(*    persisted version, epoch and content.                                *)
(*                                                                         *)
(* ver/ep are the in-memory FileState.version/.epoch.  While the daemon is *)
(* down they keep the last values it had: that is what lets the action     *)
(* properties EpochMonotonic/VersionMonotonic compare the state before a   *)
(* crash with the state re-adopted at restart.                             *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets

CONSTANTS
    Writers,      \* write handles (processes), at least 3
    Files,        \* regular files (paths)
    NoClaim,      \* model value: a writer without an open write handle
    MaxVersion,   \* state-space bounds (see Bounds, a CONSTRAINT)
    MaxEpoch

VARIABLES
    up,      \* the daemon is running
    ver,     \* in-memory FileState.version (last value while down)
    ep,      \* in-memory FileState.epoch   (last value while down)
    dver,    \* persisted version (state attribute of the backing file)
    dep,     \* persisted epoch
    claim,   \* claim[w]: the write claim of w's open handle, or NoClaim
    hist,    \* history: one record per commit that landed
    restarted \* history: the daemon has restarted at least once

vars == <<up, ver, ep, dver, dep, claim, hist, restarted>>

Claims == [file : Files, version : Nat, epoch : Nat]

TypeOK ==
    /\ up \in BOOLEAN
    /\ ver \in [Files -> Nat] /\ ep \in [Files -> Nat]
    /\ dver \in [Files -> Nat] /\ dep \in [Files -> Nat]
    /\ claim \in [Writers -> Claims \cup {NoClaim}]
    /\ \A c \in hist : c.file \in Files

(***************************************************************************)
(* The guard of every commit: decide(file, claim) in coordinator.py.       *)
(* EpochGuard first (a revoked claim is fenced even if the version never   *)
(* moved, G2), then VersionGuard (G1).  Mutants pass their own decide.     *)
(***************************************************************************)
EpochGuard(f, c)   == c.epoch = ep[f]
VersionGuard(f, c) == c.version = ver[f]

Decide(f, c) ==
    IF ~EpochGuard(f, c) THEN "fenced"          \* Fenced, ESTALE
    ELSE IF ~VersionGuard(f, c) THEN "conflict" \* Conflict, EAGAIN
    ELSE "ok"

Init ==
    /\ up = TRUE
    /\ ver = [f \in Files |-> 0] /\ ep = [f \in Files |-> 0]
    /\ dver = [f \in Files |-> 0] /\ dep = [f \in Files |-> 0]
    /\ claim = [w \in Writers |-> NoClaim]
    /\ hist = {}
    /\ restarted = FALSE

\* Coordinator.open_write(rewrite=False): rests on the current version/epoch.
OpenWrite(w, f) ==
    /\ up
    /\ claim[w] = NoClaim
    /\ claim' = [claim EXCEPT ![w] = [file |-> f, version |-> ver[f], epoch |-> ep[f]]]
    /\ UNCHANGED <<up, ver, ep, dver, dep, hist, restarted>>

(***************************************************************************)
(* Coordinator.commit: decide, install (the draft carries the new version  *)
(* and the current epoch; the rename persists content, version and epoch   *)
(* together), advance.  One atomic step (G3).  The handle stays open and   *)
(* now rests on the version it created.                                    *)
(***************************************************************************)
CommitWith(w, D(_, _)) ==
    LET c == claim[w] IN
    /\ up
    /\ c # NoClaim
    /\ LET f == c.file IN
       IF D(f, c) = "ok"
       THEN /\ ver' = [ver EXCEPT ![f] = ver[f] + 1]
            /\ dver' = [dver EXCEPT ![f] = ver[f] + 1]
            /\ dep' = [dep EXCEPT ![f] = ep[f]]
            /\ claim' = [claim EXCEPT ![w].version = ver[f] + 1]
            /\ hist' = hist \cup {[file |-> f,
                                   base |-> c.version, new |-> ver[f] + 1,
                                   epoch |-> c.epoch, current |-> ep[f]]}
            /\ UNCHANGED <<up, ep, restarted>>
       \* Refused (Conflict or Fenced): the writer gets the error and its
       \* handle is closed; nothing else changes.
       ELSE /\ claim' = [claim EXCEPT ![w] = NoClaim]
            /\ UNCHANGED <<up, ver, ep, dver, dep, hist, restarted>>

Commit(w) == CommitWith(w, Decide)

\* Coordinator.release: the handle is gone.
Release(w) ==
    /\ up
    /\ claim[w] # NoClaim
    /\ claim' = [claim EXCEPT ![w] = NoClaim]
    /\ UNCHANGED <<up, ver, ep, dver, dep, hist, restarted>>

(***************************************************************************)
(* Coordinator.reclaim: persist(new_epoch) (fsync) and only then bump the  *)
(* in-memory epoch.  A crash in between is a crash before or after this    *)
(* step, so the correct order is one atomic action.                        *)
(***************************************************************************)
Reclaim(f) ==
    /\ up
    /\ dep' = [dep EXCEPT ![f] = ep[f] + 1]
    /\ ep' = [ep EXCEPT ![f] = ep[f] + 1]
    /\ UNCHANGED <<up, ver, dver, claim, hist, restarted>>

\* Coordinator.adopt_foreign: a write straight into the backing file becomes
\* a version; persisted with the current epoch before the in-memory bump.
AdoptForeign(f) ==
    /\ up
    /\ dver' = [dver EXCEPT ![f] = ver[f] + 1]
    /\ dep' = [dep EXCEPT ![f] = ep[f]]
    /\ ver' = [ver EXCEPT ![f] = ver[f] + 1]
    /\ UNCHANGED <<up, ep, claim, hist, restarted>>

\* The daemon or the machine dies: every claim and draft is lost.
Crash ==
    /\ up
    /\ up' = FALSE
    /\ claim' = [w \in Writers |-> NoClaim]
    /\ UNCHANGED <<ver, ep, dver, dep, hist, restarted>>

\* Restart: Coordinator.adopt(path, Persisted) for every file.
Restart ==
    /\ ~up
    /\ up' = TRUE
    /\ ver' = dver
    /\ ep' = dep
    /\ restarted' = TRUE
    /\ UNCHANGED <<dver, dep, claim, hist>>

\* Everything but Commit and Reclaim, so that a mutant replaces just those.
Other ==
    \/ \E w \in Writers, f \in Files : OpenWrite(w, f)
    \/ \E w \in Writers : Release(w)
    \/ \E f \in Files : AdoptForeign(f)
    \/ Crash
    \/ Restart

Next ==
    \/ Other
    \/ \E w \in Writers : Commit(w)
    \/ \E f \in Files : Reclaim(f)

Spec == Init /\ [][Next]_vars

(***************************************************************************)
(* State constraint (CONSTRAINT in the .cfg): small bounds.                *)
(***************************************************************************)
Bounds == \A f \in Files : ver[f] <= MaxVersion /\ ep[f] <= MaxEpoch

(***************************************************************************)
(* Invariants                                                              *)
(***************************************************************************)

\* G1: every commit rests on the version it replaced (base = new - 1).
NoLostUpdate == \A c \in hist : c.new = c.base + 1

\* G1: of the writers whose claims rest on one version, at most one commits.
OneWinner ==
    \A c, d \in hist : (c.file = d.file /\ c.base = d.base) => c = d

\* G2: no commit lands under a superseded epoch.
NoStaleApply == \A c \in hist : c.epoch = c.current

\* While up, memory never runs ahead of the disk (reclaim persists first).
PersistedCoversMemory ==
    up => \A f \in Files : dep[f] = ep[f] /\ dver[f] = ver[f]

(***************************************************************************)
(* Action properties (PROPERTY in the .cfg): never down, not even across a *)
(* crash: Crash keeps ver/ep, Restart replaces them by what was persisted. *)
(***************************************************************************)
EpochMonotonic   == [][\A f \in Files : ep'[f] >= ep[f]]_vars
VersionMonotonic == [][\A f \in Files : ver'[f] >= ver[f]]_vars

(***************************************************************************)
(* Reachability: each of these must be VIOLATED (see Fencing_reach_*.cfg), *)
(* so the invariants above are not vacuously true.                         *)
(***************************************************************************)
NeverCommit   == hist = {}
NeverReclaim  == \A f \in Files : ep[f] = 0
NeverConflict == \A w \in Writers :
                    (up /\ claim[w] # NoClaim) => Decide(claim[w].file, claim[w]) # "conflict"
NeverFenced   == \A w \in Writers :
                    (up /\ claim[w] # NoClaim) => Decide(claim[w].file, claim[w]) # "fenced"
\* After a crash and a restart, a writer can commit to a reclaimed file.
NeverCommitAfterRestart ==
    ~(restarted /\ up /\ \E w \in Writers :
         /\ claim[w] # NoClaim
         /\ ep[claim[w].file] > 0
         /\ Decide(claim[w].file, claim[w]) = "ok")
=============================================================================
