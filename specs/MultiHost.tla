----------------------------- MODULE MultiHost -----------------------------
(***************************************************************************)
(* fencefs across hosts: one file on shared storage, several hosts, etcd   *)
(* as the linearizable judge.  Mirrors fencefs/etcd/coordination.py and    *)
(* docs/multihost.md.                                                      *)
(*                                                                         *)
(* etcd (each etcd action is one linearizable step):                       *)
(*   rec    the file record /<c>/f/PATH: [v, e, c] (version, epoch at      *)
(*          commit, content id = the draft's name)                         *)
(*   krev   its mod_revision (any write to the key moves it)               *)
(*   epoch  /<c>/e/PATH                                                    *)
(*   hold   /<c>/x/PATH, the exclusive holder (bound to its host's lease)  *)
(*   held   /<c>/xh/PATH, the same without a lease                         *)
(* shared storage:                                                         *)
(*   file   the installed file: [v, c] (the state attribute travels with   *)
(*          the content, so version and content id are renamed in as one)  *)
(*   drafts content ids of the drafts in .fencefs/drafts/                  *)
(* hosts: up[h]; writers w (any host) with pc[w], claim[w].                *)
(*                                                                         *)
(* A commit: Open (rests on etcd's record, after rolling the file forward  *)
(* to it), Draft (the bytes, fsynced, on shared storage), Send (the Txn    *)
(* goes out), Apply (etcd judges it: epoch compare, mod_revision compare,  *)
(* [exclusive] holder compare), then Install (rename; close() returns).  *)
(*             The reply can be lost (Timeout): Resolve reads back, and if  *)
(* the Txn has not applied it rewrites the record (moving krev) so that    *)
(* the Txn, still in flight, can never apply.  A host can crash at every   *)
(* step (its writers vanish, its drafts and in-flight Txns stay); when it  *)
(* restarts, Recover rolls forward a draft the record names and puts away  *)
(* the others (after moving krev).  Any host rolls the file forward to     *)
(* the record (RollForward).  Leases expire at any time (a frozen or       *)
(* partitioned host); any host reclaims at any time.                       *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets, TLC

CONSTANTS
    Hosts,        \* e.g. {h1, h2}
    Writers,      \* e.g. {w1, w2}: each opens on any host
    NoClaim,      \* model value
    NoHost,       \* model value: no exclusive holder
    Exclusive,    \* TRUE: the file's policy is exclusive
    MaxVersion, MaxEpoch, MaxDrafts,
    MaxCrashes    \* host crashes per behaviour (each can hit any step)

VARIABLES
    rec, krev, epoch, hold, held,   \* etcd
    file, drafts, dvers,            \* shared storage
    up, pc, claim, inflight,        \* hosts, writers, Txns in flight
    nextc,                          \* the next content id (uuid stand-in)
    hist,                           \* history: every decided commit
    rolled,                         \* history: a host installed another's decision
    crashes                         \* how many host crashes so far

vars == <<rec, krev, epoch, hold, held, file, drafts, dvers, up, pc, claim, inflight, nextc,
          hist, rolled, crashes>>

PCs == {"idle", "open", "drafted", "waiting", "resolving", "decided"}

Init ==
    /\ rec = [v |-> 0, e |-> 0, c |-> 0]
    /\ krev = 0 /\ epoch = 0 /\ hold = NoHost /\ held = NoHost
    /\ file = [v |-> 0, c |-> 0]
    /\ drafts = {}
    /\ dvers = [c \in 1..MaxDrafts |-> 0]
    /\ up = [h \in Hosts |-> TRUE]
    /\ pc = [w \in Writers |-> "idle"]
    /\ claim = [w \in Writers |-> NoClaim]
    /\ inflight = {}
    /\ nextc = 1
    /\ hist = {}
    /\ rolled = FALSE
    /\ crashes = 0

TypeOK ==
    /\ rec.v \in Nat /\ krev \in Nat /\ epoch \in Nat
    /\ hold \in Hosts \cup {NoHost} /\ held \in Hosts \cup {NoHost}
    /\ drafts \subseteq 1..MaxDrafts
    /\ pc \in [Writers -> PCs]
    /\ \A w \in Writers : (pc[w] = "idle") <=> (claim[w] = NoClaim)

HostOf(w) == claim[w].host

\* dvers[c]: the version draft c carries in its state attribute (its
\* claim's version + 1, written at prepare, before the decision).

(***************************************************************************)
(* Open: the host reads the record and rolls the file forward first, so    *)
(* the content the writer reads IS the record's version (file.c = rec.c).  *)
(* Exclusive: takes the hold (etcd Txn: holder absent); a hold left by a   *)
(* host whose lease expired (held # NoHost) is reclaimed in the same Txn.  *)
(***************************************************************************)
OpenWith(w, h, RollGuard) ==
    /\ up[h] /\ pc[w] = "idle"
    /\ RollGuard
    /\ IF Exclusive
       THEN /\ hold \in {NoHost, h}
            /\ LET bump == hold = NoHost /\ held \notin {NoHost, h}
                   e == IF bump THEN epoch + 1 ELSE epoch IN
               /\ epoch' = e
               /\ hold' = h /\ held' = h
               /\ claim' = [claim EXCEPT ![w] = [host |-> h, v |-> rec.v, e |-> e,
                                                  rev |-> krev, base |-> file.v, c |-> 0,
                                                  tk |-> bump]]
       ELSE /\ claim' = [claim EXCEPT ![w] = [host |-> h, v |-> rec.v, e |-> epoch,
                                               rev |-> krev, base |-> file.v, c |-> 0,
                                               tk |-> FALSE]]
            /\ UNCHANGED <<dvers, epoch, hold, held>>
    /\ pc' = [pc EXCEPT ![w] = "open"]
    /\ UNCHANGED <<dvers, rec, krev, file, drafts, up, inflight, nextc, hist, rolled, crashes>>

Open(w, h) == OpenWith(w, h, file.c = rec.c)

\* The draft, fsynced into the shared drafts/ (content id: a fresh uuid).
Draft(w) ==
    /\ pc[w] = "open" /\ up[HostOf(w)] /\ nextc <= MaxDrafts
    /\ drafts' = drafts \cup {nextc}
    /\ dvers' = [dvers EXCEPT ![nextc] = claim[w].v + 1]
    /\ claim' = [claim EXCEPT ![w].c = nextc]
    /\ nextc' = nextc + 1
    /\ pc' = [pc EXCEPT ![w] = "drafted"]
    /\ UNCHANGED <<rec, krev, epoch, hold, held, file, up, inflight, hist, rolled, crashes>>

\* The commit Txn goes out (it may apply later, even after the host died).
Send(w) ==
    /\ pc[w] = "drafted" /\ up[HostOf(w)]
    /\ inflight' = inflight \cup {claim[w]}
    /\ pc' = [pc EXCEPT ![w] = "waiting"]
    /\ UNCHANGED <<dvers, rec, krev, epoch, hold, held, file, drafts, up, claim, nextc, hist, rolled, crashes>>

(***************************************************************************)
(* etcd applies a commit Txn: the compares of commit_txn().                *)
(***************************************************************************)
EpochCompare(t)   == t.e = epoch
VersionCompare(t) == t.rev = krev
HolderCompare(t)  == ~Exclusive \/ hold = t.host

Judge(t, EC(_), VC(_)) == EC(t) /\ VC(t) /\ HolderCompare(t)

\* The writer whose Txn this is, if it still waits for the reply.
Waiter(t) == {w \in Writers : pc[w] = "waiting" /\ claim[w] = t}

ApplyWith(t, EC(_), VC(_)) ==
    /\ t \in inflight
    /\ inflight' = inflight \ {t}
    /\ IF Judge(t, EC, VC)
       THEN /\ rec' = [v |-> t.v + 1, e |-> t.e, c |-> t.c]
            /\ krev' = krev + 1
            /\ hist' = hist \cup {[c |-> t.c, base |-> t.base, new |-> t.v + 1,
                                   epoch |-> t.e, current |-> epoch, host |-> t.host,
                                   holder |-> hold, took |-> t.tk]}
            /\ pc' = [w \in Writers |-> IF w \in Waiter(t) THEN "decided" ELSE pc[w]]
            /\ UNCHANGED drafts
       \* refused: the waiting writer (if any) gets the error, its draft goes
       \* to rejected/; nobody waiting: the draft is an orphan for Recover.
       ELSE /\ pc' = [w \in Writers |-> IF w \in Waiter(t) THEN "idle" ELSE pc[w]]
            /\ drafts' = IF Waiter(t) # {} THEN drafts \ {t.c} ELSE drafts
            /\ UNCHANGED <<dvers, rec, krev, hist>>
    /\ claim' = [w \in Writers |-> IF w \in Waiter(t) /\ ~Judge(t, EC, VC)
                                   THEN NoClaim ELSE claim[w]]
    /\ UNCHANGED <<dvers, epoch, hold, held, file, up, nextc, rolled, crashes>>

Apply(t) == ApplyWith(t, EpochCompare, VersionCompare)

\* The reply is lost (timeout, connection reset): the outcome is unknown.
Timeout(w) ==
    /\ pc[w] \in {"waiting"} /\ up[HostOf(w)]
    /\ pc' = [pc EXCEPT ![w] = "resolving"]
    /\ UNCHANGED <<dvers, rec, krev, epoch, hold, held, file, drafts, up, claim, inflight, nextc,
                   hist, rolled, crashes>>

(***************************************************************************)
(* coordination.resolve: read back.  Our content id in the record: it      *)
(* applied.  Else, if the key still sits at the claim's revision, rewrite  *)
(* it (an abort: krev moves, the in-flight Txn can never apply); then the  *)
(* writer gets the error and the draft goes to rejected/.                  *)
(***************************************************************************)
ResolveWith(w, Abort) ==
    /\ pc[w] = "resolving" /\ up[HostOf(w)]
    /\ IF rec.c = claim[w].c
       THEN /\ pc' = [pc EXCEPT ![w] = "decided"]
            /\ UNCHANGED <<dvers, krev, drafts, claim>>
       ELSE /\ krev' = IF Abort /\ krev = claim[w].rev THEN krev + 1 ELSE krev
            /\ drafts' = drafts \ {claim[w].c}
            /\ pc' = [pc EXCEPT ![w] = "idle"]
            /\ claim' = [claim EXCEPT ![w] = NoClaim]
    /\ UNCHANGED <<dvers, rec, epoch, hold, held, file, up, inflight, nextc, hist, rolled, crashes>>

Resolve(w) == ResolveWith(w, TRUE)

\* The decided draft is renamed into place (if nobody rolled it forward yet).
InstallStep(c) ==
    IF c \in drafts
    THEN /\ file' = [v |-> dvers[c], c |-> c]
         /\ drafts' = drafts \ {c}
    ELSE UNCHANGED <<dvers, file, drafts>>

\* Install, and close() returns success (G6: decided, then installed and
\* durable); the handle ends.  A crash between the rename and the return
\* is a crash after this step: the writer is gone either way.
Install(w) ==
    /\ pc[w] = "decided" /\ up[HostOf(w)]
    /\ InstallStep(claim[w].c)
    /\ pc' = [pc EXCEPT ![w] = "idle"]
    /\ claim' = [claim EXCEPT ![w] = NoClaim]
    /\ UNCHANGED <<dvers, rec, krev, epoch, hold, held, up, inflight, nextc, hist, rolled, crashes>>

\* A writer gives up before sending (close without writing, or killed: G7).
Abandon(w) ==
    /\ pc[w] \in {"open", "drafted"} /\ up[HostOf(w)]
    /\ drafts' = drafts \ {claim[w].c}
    /\ pc' = [pc EXCEPT ![w] = "idle"]
    /\ claim' = [claim EXCEPT ![w] = NoClaim]
    /\ UNCHANGED <<dvers, rec, krev, epoch, hold, held, file, up, inflight, nextc, hist, rolled, crashes>>

\* Any host that looks at the file rolls it forward to the record.
RollForward(h) ==
    /\ up[h]
    /\ rec.c # file.c /\ rec.c \in drafts
    /\ InstallStep(rec.c)
    /\ rolled' = TRUE
    /\ UNCHANGED <<dvers, rec, krev, epoch, hold, held, up, pc, claim, inflight, nextc, hist,
                   crashes>>

\* Any host reclaims (fencefs reclaim, setfattr, the sweep): one Txn.
Reclaim(h) ==
    /\ up[h]
    /\ epoch' = epoch + 1
    /\ hold' = NoHost /\ held' = NoHost
    /\ UNCHANGED <<dvers, rec, krev, file, drafts, up, pc, claim, inflight, nextc, hist, rolled, crashes>>

\* Exclusive: the holder releases when none of its writers is open.
Release(h) ==
    /\ up[h] /\ hold = h
    /\ \A w \in Writers : pc[w] # "idle" => HostOf(w) # h
    /\ hold' = NoHost /\ held' = NoHost
    /\ UNCHANGED <<dvers, rec, krev, epoch, file, drafts, up, pc, claim, inflight, nextc, hist,
                   rolled, crashes>>

\* The holder's lease runs out (frozen, crashed, partitioned): etcd deletes
\* the lease-bound hold; held/ stays and makes the next open reclaim.
LeaseExpire(h) ==
    /\ hold = h
    /\ hold' = NoHost
    /\ UNCHANGED <<dvers, rec, krev, epoch, held, file, drafts, up, pc, claim, inflight, nextc, hist,
                   rolled, crashes>>

\* A host dies at any step: its writers vanish; drafts, Txns in flight and
\* the file stay.
Crash(h) ==
    /\ up[h] /\ crashes < MaxCrashes
    /\ crashes' = crashes + 1
    /\ up' = [up EXCEPT ![h] = FALSE]
    /\ pc' = [w \in Writers |-> IF pc[w] # "idle" /\ HostOf(w) = h THEN "idle" ELSE pc[w]]
    /\ claim' = [w \in Writers |-> IF pc[w] # "idle" /\ HostOf(w) = h THEN NoClaim
                                   ELSE claim[w]]
    /\ UNCHANGED <<dvers, rec, krev, epoch, hold, held, file, drafts, inflight, nextc, hist,
                   rolled>>

Restart(h) ==
    /\ ~up[h]
    /\ up' = [up EXCEPT ![h] = TRUE]
    /\ UNCHANGED <<dvers, rec, krev, epoch, hold, held, file, drafts, pc, claim, inflight, nextc,
                   hist, rolled, crashes>>

(***************************************************************************)
(* Recover: an orphaned draft (no live writer owns it).  The record names  *)
(* it: roll forward.  Else: move krev first (so a Txn of it still in       *)
(* flight can never apply), then put it away as abandoned.                 *)
(***************************************************************************)
Owned(c) == \E w \in Writers : pc[w] # "idle" /\ claim[w].c = c

RecoverWith(h, c, RollFirst, Abort) ==
    /\ up[h] /\ c \in drafts /\ ~Owned(c)
    /\ IF RollFirst /\ rec.c = c
       THEN /\ InstallStep(c) /\ rolled' = TRUE /\ UNCHANGED krev
       ELSE /\ drafts' = drafts \ {c} /\ krev' = IF Abort THEN krev + 1 ELSE krev
            /\ UNCHANGED <<dvers, file, rolled, crashes>>
    /\ UNCHANGED <<dvers, rec, epoch, hold, held, up, pc, claim, inflight, nextc, hist, crashes>>

Recover(h, c) == RecoverWith(h, c, TRUE, TRUE)

\* Everything but the actions a mutant replaces (specs/mutants/MultiHost_*).
Core ==
    \/ \E w \in Writers : Send(w) \/ Timeout(w) \/ Install(w) \/ Abandon(w)
    \/ \E h \in Hosts : Reclaim(h) \/ Release(h) \/ LeaseExpire(h) \/ Crash(h) \/ Restart(h)

Next ==
    \/ Core
    \/ \E w \in Writers, h \in Hosts : Open(w, h)
    \/ \E w \in Writers : Draft(w) \/ Resolve(w)
    \/ \E t \in inflight : Apply(t)
    \/ \E h \in Hosts : RollForward(h)
    \/ \E h \in Hosts, c \in drafts : Recover(h, c)

Spec == Init /\ [][Next]_vars

Bounds == rec.v <= MaxVersion /\ epoch <= MaxEpoch /\ krev <= MaxVersion + 1

\* Hosts are interchangeable, and so are writers (SYMMETRY in the .cfg).
Symmetry == Permutations(Hosts) \cup Permutations(Writers)

(***************************************************************************)
(* Invariants                                                              *)
(***************************************************************************)
Decided == {0} \cup {d.c : d \in hist}

\* G1: one decision per version; each built on the content it replaces.
OneWinner == \A d1, d2 \in hist : d1.new = d2.new => d1 = d2
NoLostUpdate == \A d \in hist : d.base = d.new - 1

\* G2: no commit decided under a superseded epoch (any host's reclaim).
NoStaleApply == \A d \in hist : d.epoch = d.current

\* G4: readers see only decided content, never ahead of the record.
OnlyDecidedVisible == file.c \in Decided /\ file.v <= rec.v

\* G6: the decided version is never lost: installed, or its draft is still
\* there for a roll-forward; an acknowledged commit was decided.
DecidedRecoverable == rec.c = file.c \/ rec.c \in drafts
DecidedIsDecided == \A w \in Writers : pc[w] = "decided" => claim[w].c \in Decided

\* Exclusive files: only the live holder's commits are decided.
HolderCommits == Exclusive => \A d \in hist : d.holder = d.host

(***************************************************************************)
(* Reachability: each must be VIOLATED (specs/reach/MultiHost_reach_*.cfg) *)
(***************************************************************************)
NeverCommit       == hist = {}
NeverTwoHosts     == ~(\E d1, d2 \in hist : d1.host # d2.host)
NeverRollForward  == ~rolled
NeverFenced       == \A w \in Writers :
                        (pc[w] = "drafted") => claim[w].e = epoch
NeverConflict     == \A w \in Writers :
                        (pc[w] = "drafted") => claim[w].rev = krev
NeverResolvedCommit == ~(\E w \in Writers : pc[w] = "resolving" /\ rec.c = claim[w].c)
\* exclusive: a writer took over a hold whose lease expired, and committed
NeverTakeover     == ~(\E d \in hist : d.took)
=============================================================================
