------------------------------ MODULE Leases ------------------------------
(***************************************************************************)
(* Leases and the exclusive policy (contract: "Policies", "Leases and     *)
(* reclamation").                                                          *)
(*                                                                         *)
(* A write claim carries a lease, renewed by every write and fsync on its *)
(* handle.  On an exclusive file a second writer gets EBUSY while the     *)
(* holder's lease is live; once it has expired the next writer reclaims    *)
(* automatically (epoch + 1) and proceeds, and the old holder is fenced.  *)
(* An operator can reclaim at any time; a sweep reclaims expired claims.  *)
(*                                                                         *)
(* Time is abstract: Expire(w) is the moment w's lease runs out (any time *)
(* it is not renewed), Renew(w) a write or fsync that renews it.          *)
(*                                                                         *)
(* Mirrors fencefs/core/coordinator.py:                                    *)
(*   OpenWrite = Coordinator.open_write under policy "exclusive": Busy     *)
(*               (ExclusiveGuard, live_holder) if another identity's claim *)
(*               is live; else, if another identity's valid claim has      *)
(*               expired (expired_holders), reclaim(persist_epoch) first   *)
(*               (LeaseExpiredReclaim) and claim under the new epoch.      *)
(*   Renew     = Coordinator.renew (write, fsync; a fenced handle's write  *)
(*               gets ESTALE from the check before it, _check_live)        *)
(*   Commit, Release, Reclaim as in Fencing.tla; Sweep = a reclaim of an   *)
(*               expired claim (`fencefs reclaim --expired`, i.e.          *)
(*               expired_writers; the idle sweep, idle_writers, can also   *)
(*               hit live leases: that is an operator Reclaim).            *)
(* Writers are identities: live_holder ignores the caller's own claims,   *)
(* so handles of one identity never exclude each other.                    *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets

CONSTANTS
    Writers,
    Files,
    Exclusive,    \* the files whose policy is "exclusive" (others optimistic)
    NoClaim,      \* model value
    MaxVersion,
    MaxEpoch

ASSUME Exclusive \subseteq Files

VARIABLES
    ver, ep,
    claim,     \* claim[w]: [file, version, epoch, expired, revoked] or NoClaim
               \*   expired: the lease ran out;  revoked: ghost, a reclaim
               \*   (or takeover) on its file happened after it was made
    last,      \* history: last[f], the record of the latest commit to f
    tookOver,  \* history: a writer took over an expired lease
    liveTaken  \* history: a takeover revoked a claim whose lease was live

vars == <<ver, ep, claim, last, tookOver, liveTaken>>

TypeOK ==
    /\ ver \in [Files -> Nat] /\ ep \in [Files -> Nat]
    /\ \A w \in Writers : claim[w] = NoClaim \/
          /\ claim[w].file \in Files
          /\ claim[w].expired \in BOOLEAN /\ claim[w].revoked \in BOOLEAN
    /\ tookOver \in BOOLEAN /\ liveTaken \in BOOLEAN

None == NoClaim   \* also "no commit yet" in last

Holds(w, f) == claim[w] # NoClaim /\ claim[w].file = f
\* A claim made under the file's current epoch (not fenced).
Valid(w, f) == Holds(w, f) /\ claim[w].epoch = ep[f]
\* A live write claim: valid and its lease has not run out.
Live(w, f)  == Valid(w, f) /\ ~claim[w].expired

EpochGuard(f, c)   == c.epoch = ep[f]
VersionGuard(f, c) == c.version = ver[f]
Decide(f, c) ==
    IF ~EpochGuard(f, c) THEN "fenced"
    ELSE IF ~VersionGuard(f, c) THEN "conflict"
    ELSE "ok"

\* The exclusive guard: would w's open of f get EBUSY?
Busy(w, f) == f \in Exclusive /\ \E v \in Writers \ {w} : Live(v, f)

Init ==
    /\ ver = [f \in Files |-> 0] /\ ep = [f \in Files |-> 0]
    /\ claim = [w \in Writers |-> NoClaim]
    /\ last = [f \in Files |-> None]
    /\ tookOver = FALSE
    /\ liveTaken = FALSE

NewClaim(f, e) ==
    [file |-> f, version |-> ver[f], epoch |-> e, expired |-> FALSE, revoked |-> FALSE]

\* Mark every claim on f revoked (ghost) when its epoch is superseded.
RevokeAll(f) ==
    [w \in Writers |-> IF Holds(w, f) THEN [claim[w] EXCEPT !.revoked = TRUE]
                       ELSE claim[w]]

(***************************************************************************)
(* open_write on f.  Exclusive files: EBUSY (not enabled) while another    *)
(* claim is live; if other valid claims exist but all their leases have   *)
(* expired, reclaim them (epoch + 1, persisted first as in Fencing.tla)   *)
(* and proceed under the new epoch.  Bump(f) is the epoch the new claim  *)
(* gets; Guard is the exclusive guard (mutants replace both).              *)
(***************************************************************************)
OpenWriteWith(w, f, Guard(_, _), Bump(_)) ==
    LET others == {v \in Writers \ {w} : Valid(v, f)}
        takeover == f \in Exclusive /\ others # {}
    IN
    /\ claim[w] = NoClaim
    /\ ~Guard(w, f)
    /\ IF takeover
       THEN LET e == Bump(f) IN
            /\ ep' = [ep EXCEPT ![f] = e]
            /\ claim' = [RevokeAll(f) EXCEPT ![w] = NewClaim(f, e)]
            /\ tookOver' = TRUE
            /\ liveTaken' = (liveTaken \/ \E v \in others : ~claim[v].expired)
       ELSE /\ claim' = [claim EXCEPT ![w] = NewClaim(f, ep[f])]
            /\ UNCHANGED <<ep, tookOver, liveTaken>>
    /\ UNCHANGED <<ver, last>>

EpochPlusOne(f) == ep[f] + 1

OpenWrite(w, f) == OpenWriteWith(w, f, Busy, EpochPlusOne)

\* A write or fsync on the handle renews the lease; on a fenced handle it
\* returns ESTALE instead, and the writer closes it.
Renew(w) ==
    /\ claim[w] # NoClaim
    /\ IF Valid(w, claim[w].file)
       THEN claim' = [claim EXCEPT ![w].expired = FALSE]
       ELSE claim' = [claim EXCEPT ![w] = NoClaim]
    /\ UNCHANGED <<ver, ep, last, tookOver, liveTaken>>

\* Time passes: w's lease runs out.
Expire(w) ==
    /\ claim[w] # NoClaim
    /\ ~claim[w].expired
    /\ claim' = [claim EXCEPT ![w].expired = TRUE]
    /\ UNCHANGED <<ver, ep, last, tookOver, liveTaken>>

\* close/fsync commits: decide, install, advance; the fsync renews the lease.
Commit(w) ==
    LET c == claim[w] IN
    /\ c # NoClaim
    /\ LET f == c.file IN
       IF Decide(f, c) = "ok"
       THEN /\ ver' = [ver EXCEPT ![f] = ver[f] + 1]
            /\ claim' = [claim EXCEPT ![w].version = ver[f] + 1, ![w].expired = FALSE]
            /\ last' = [last EXCEPT ![f] =
                          [revoked |-> c.revoked, base |-> c.version,
                           replaced |-> ver[f], epoch |-> c.epoch, current |-> ep[f]]]
            /\ UNCHANGED <<ep, tookOver, liveTaken>>
       ELSE /\ claim' = [claim EXCEPT ![w] = NoClaim]
            /\ UNCHANGED <<ver, ep, last, tookOver, liveTaken>>

Release(w) ==
    /\ claim[w] # NoClaim
    /\ claim' = [claim EXCEPT ![w] = NoClaim]
    /\ UNCHANGED <<ver, ep, last, tookOver, liveTaken>>

\* Operator / orchestrator reclaim (setfattr user.fencefs.reclaim), any time.
Reclaim(f) ==
    /\ ep' = [ep EXCEPT ![f] = ep[f] + 1]
    /\ claim' = RevokeAll(f)
    /\ UNCHANGED <<ver, last, tookOver, liveTaken>>

\* The optional sweep: reclaims a file whose valid write claim is idle
\* past the limit (its lease expired).
Sweep(f) ==
    /\ \E w \in Writers : Valid(w, f) /\ claim[w].expired
    /\ Reclaim(f)

Other ==
    \/ \E w \in Writers : Renew(w) \/ Expire(w) \/ Commit(w) \/ Release(w)
    \/ \E f \in Files : Reclaim(f) \/ Sweep(f)

Next ==
    \/ Other
    \/ \E w \in Writers, f \in Files : OpenWrite(w, f)

Spec == Init /\ [][Next]_vars

Bounds == \A f \in Files : ver[f] <= MaxVersion /\ ep[f] <= MaxEpoch

(***************************************************************************)
(* Invariants                                                              *)
(***************************************************************************)

\* Exclusive: at most one live writer per exclusive file.
AtMostOneLiveWriter ==
    \A f \in Exclusive : Cardinality({w \in Writers : Live(w, f)}) <= 1

\* A holder whose claim was reclaimed (by a takeover, the sweep or an
\* operator) never commits.
ReclaimedHolderNeverCommits ==
    \A f \in Files : last[f] # None => ~last[f].revoked

\* Under exclusive as under optimistic: no commit under a superseded epoch,
\* and every commit rests on the version it replaced.
NoStaleApply == \A f \in Files : last[f] # None => last[f].epoch = last[f].current
NoLostUpdate == \A f \in Files : last[f] # None => last[f].base = last[f].replaced

\* A live lease is never taken over automatically (only expired ones are).
LiveLeaseRespected == ~liveTaken

(***************************************************************************)
(* Reachability: must be VIOLATED (reach/Leases_reach_*.cfg).              *)
(***************************************************************************)
NeverBusy == ~\E w \in Writers, f \in Exclusive : claim[w] = NoClaim /\ Busy(w, f)
NeverTakeover == ~tookOver
\* After a takeover, the new holder commits under the new epoch.
NeverCommitAfterTakeover ==
    ~(tookOver /\ \E f \in Exclusive : last[f] # None /\ last[f].epoch > 0)
\* The old holder, its lease taken over, is fenced at its commit.
NeverHolderFenced ==
    ~\E w \in Writers : claim[w] # NoClaim /\ claim[w].revoked
                        /\ claim[w].file \in Exclusive
                        /\ Decide(claim[w].file, claim[w]) = "fenced"
=============================================================================
