---------------------------- MODULE Transactions ----------------------------
(***************************************************************************)
(* Multi-file commits (G9) and snapshots (G8).                             *)
(*                                                                         *)
(* Mirrors fencefs/core/transaction.py and fencefs/store/txn.py,           *)
(* fencefs/store/snapshots.py.  Action names:                              *)
(*   Begin       = a transaction reads its files (each read is an          *)
(*                 observation claim: the member's Member(version, epoch)) *)
(*   CommitMany  = commit_many: decide_many over EVERY member; if all      *)
(*                 pass, TxnStore.install writes the intent record (fsynced)*)
(*                 and the renames begin                                   *)
(*   InstallOne  = one rename of a member's draft over its file.  The      *)
(*                 daemon does the renames inside the same step as the     *)
(*                 decision, so no other action of the daemon runs while   *)
(*                 install is pending; only a Crash can come in between.   *)
(*   Reclaim     = Coordinator.reclaim (persist, then bump)                *)
(*   Snapshot    = Snapshots.cut: one step between commits                 *)
(*   Crash / Restart: Restart runs TxnStore.recover: with a durable intent *)
(*                 the remaining drafts are renamed (roll forward); with   *)
(*                 none, they are put away (roll back).                    *)
(* A single-file commit is a transaction of one file.                      *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets

CONSTANTS
    Txns,        \* writers (identities running transactions)
    Files,       \* regular files
    NoTxn,       \* model value: a writer with nothing staged
    MaxVersion,
    MaxEpoch

VARIABLES
    up,       \* the daemon is running
    ver, ep,  \* in-memory versions and epochs (last values while down)
    dver, dep,\* persisted: the version and epoch of each file's content
    claim,    \* claim[t]: [files, ver, ep] the transaction rests on, or NoTxn
    pending,  \* drafts of the transaction being installed, not yet renamed
    pnew,     \* pnew[f]: the version the pending draft of f carries
    intent,   \* the intent record of the transaction being installed is durable
    hist,     \* history: every transaction decided (one record each)
    cut,      \* the latest snapshot: [f -> persisted version at the cut], or NoTxn
    rolled    \* history: a restart has rolled a transaction forward

vars == <<up, ver, ep, dver, dep, claim, pending, pnew, intent, hist, cut, rolled>>

Busy == pending # {}    \* an install step is in progress

Init ==
    /\ up = TRUE
    /\ ver = [f \in Files |-> 0] /\ ep = [f \in Files |-> 0]
    /\ dver = [f \in Files |-> 0] /\ dep = [f \in Files |-> 0]
    /\ claim = [t \in Txns |-> NoTxn]
    /\ pending = {} /\ pnew = [f \in Files |-> 0] /\ intent = FALSE
    /\ hist = {}
    /\ cut = NoTxn
    /\ rolled = FALSE

(* The guard of one member: decide() (EpochGuard, then VersionGuard). *)
Guard(c, f) ==
    IF c.ep[f] # ep[f] THEN "fenced"
    ELSE IF c.ver[f] # ver[f] THEN "conflict"
    ELSE "ok"

(* decide_many: every member's guard must pass. *)
DecideAll(c) == \A f \in c.files : Guard(c, f) = "ok"

Begin(t, S) ==
    /\ up /\ ~Busy
    /\ claim[t] = NoTxn
    /\ S # {}
    /\ claim' = [claim EXCEPT ![t] = [files |-> S,
                                      ver |-> [f \in S |-> ver[f]],
                                      ep |-> [f \in S |-> ep[f]]]]
    /\ UNCHANGED <<up, ver, ep, dver, dep, pending, pnew, intent, hist, cut, rolled>>

(***************************************************************************)
(* CommitMany: decide every guard; if all pass, write the intent record    *)
(* (WithIntent) and advance every file in memory in the same step; the     *)
(* renames follow (InstallOne) before anything else runs.  Refused: the    *)
(* writer gets EAGAIN/ESTALE, every draft goes to rejected/, nothing moves. *)
(***************************************************************************)
CommitManyWith(t, D(_), WithIntent) ==
    LET c == claim[t] IN
    /\ up /\ ~Busy
    /\ c # NoTxn
    /\ claim' = [claim EXCEPT ![t] = NoTxn]
    /\ IF D(c)
       THEN /\ ver' = [f \in Files |-> IF f \in c.files THEN ver[f] + 1 ELSE ver[f]]
            /\ pending' = c.files
            /\ pnew' = [f \in Files |-> IF f \in c.files THEN ver[f] + 1 ELSE pnew[f]]
            /\ intent' = WithIntent
            /\ hist' = hist \cup {[files |-> c.files,
                                   base |-> c.ver, new |-> [f \in c.files |-> ver[f] + 1],
                                   epoch |-> c.ep, current |-> [f \in c.files |-> ep[f]]]}
            /\ UNCHANGED <<up, ep, dver, dep, cut, rolled>>
       ELSE UNCHANGED <<up, ver, ep, dver, dep, pending, pnew, intent, hist, cut, rolled>>

CommitMany(t) == CommitManyWith(t, DecideAll, TRUE)

(* One rename: the draft carries its version and the current epoch. *)
InstallOne(f) ==
    /\ up
    /\ f \in pending
    /\ dver' = [dver EXCEPT ![f] = pnew[f]]
    /\ dep' = [dep EXCEPT ![f] = ep[f]]
    /\ pending' = pending \ {f}
    /\ intent' = (intent /\ pending' # {})  \* the txn-commit line ends it
    /\ UNCHANGED <<up, ver, ep, claim, pnew, hist, cut, rolled>>

Reclaim(f) ==
    /\ up /\ ~Busy
    /\ ep[f] < MaxEpoch
    /\ dep' = [dep EXCEPT ![f] = ep[f] + 1]
    /\ ep' = [ep EXCEPT ![f] = ep[f] + 1]
    /\ UNCHANGED <<up, ver, dver, claim, pending, pnew, intent, hist, cut, rolled>>

(* Snapshots.cut: links to every committed inode, in one step between commits. *)
Snapshot ==
    /\ up /\ ~Busy
    /\ cut' = dver
    /\ UNCHANGED <<up, ver, ep, dver, dep, claim, pending, pnew, intent, hist, rolled>>

Abort(t) ==
    /\ up
    /\ claim[t] # NoTxn
    /\ claim' = [claim EXCEPT ![t] = NoTxn]
    /\ UNCHANGED <<up, ver, ep, dver, dep, pending, pnew, intent, hist, cut, rolled>>

(* The daemon dies, possibly between two renames: claims are lost; drafts, *)
(* the journal (intent) and the renames already done stay.                  *)
Crash ==
    /\ up
    /\ up' = FALSE
    /\ claim' = [t \in Txns |-> NoTxn]
    /\ UNCHANGED <<ver, ep, dver, dep, pending, pnew, intent, hist, cut, rolled>>

(* TxnStore.recover, then re-adopt every file from the disk. *)
RestartWith(RollForward) ==
    /\ ~up
    /\ up' = TRUE
    /\ LET fwd == pending # {} /\ RollForward /\ intent
           d == IF fwd THEN [f \in Files |-> IF f \in pending THEN pnew[f] ELSE dver[f]]
                ELSE dver
       IN /\ dver' = d
          /\ dep' = [f \in Files |-> IF fwd /\ f \in pending THEN ep[f] ELSE dep[f]]
          /\ ver' = d
          /\ ep' = [f \in Files |-> IF fwd /\ f \in pending THEN ep[f] ELSE dep[f]]
          /\ rolled' = (rolled \/ fwd)
    /\ pending' = {}            \* renamed (forward) or put away (back)
    /\ intent' = FALSE
    /\ UNCHANGED <<claim, pnew, hist, cut>>

Restart == RestartWith(TRUE)

Other ==
    \/ \E t \in Txns, S \in SUBSET Files : Begin(t, S)
    \/ \E t \in Txns : Abort(t)
    \/ \E f \in Files : InstallOne(f)
    \/ \E f \in Files : Reclaim(f)
    \/ Snapshot
    \/ Crash

Next ==
    \/ Other
    \/ \E t \in Txns : CommitMany(t)
    \/ Restart

Spec == Init /\ [][Next]_vars

Bounds == \A f \in Files : ver[f] <= MaxVersion

(***************************************************************************)
(* Invariants                                                              *)
(***************************************************************************)

TypeOK ==
    /\ up \in BOOLEAN /\ intent \in BOOLEAN /\ rolled \in BOOLEAN
    /\ pending \subseteq Files
    /\ ver \in [Files -> Nat] /\ dver \in [Files -> Nat]

(* G1 per file: every member's install rests on the version it replaced, *)
NoLostUpdate == \A T \in hist : \A f \in T.files : T.new[f] = T.base[f] + 1

(* ... and of members resting on one version of a file, at most one lands. *)
OneWinner ==
    \A T, U \in hist : \A f \in T.files \cap U.files : T.base[f] = U.base[f] => T = U

(* G2 per file: no member lands under a superseded epoch. *)
NoStaleApply == \A T \in hist : \A f \in T.files : T.epoch[f] = T.current[f]

(* G9: outside an install step (which no reader can watch), a decided      *)
(* transaction has landed in every one of its files or in none of them.   *)
Landed(T, f) == dver[f] >= T.new[f]
AllOrNothing ==
    (up /\ ~Busy) =>
        \A T \in hist : (\E f \in T.files : Landed(T, f)) => (\A f \in T.files : Landed(T, f))

(* G8: no snapshot holds some files of a transaction new and others old. *)
NoMixedCut ==
    cut # NoTxn =>
        \A T \in hist : ~(\E f, g \in T.files : cut[f] >= T.new[f] /\ cut[g] < T.new[g])

(* Versions on disk never go down (roll-back never undoes a rename). *)
PersistedMonotonic == [][\A f \in Files : dver'[f] >= dver[f]]_vars

(***************************************************************************)
(* Reachability: each must be VIOLATED (specs/reach/Transactions_reach_X.cfg) *)
(***************************************************************************)
Multi(T) == Cardinality(T.files) >= 2
NeverMultiCommit == ~\E T \in hist : Multi(T) /\ \A f \in T.files : Landed(T, f)
\* A multi-file transaction with one member still good and another stale.
NeverPartlyStale ==
    ~\E t \in Txns : claim[t] # NoTxn /\ up /\ ~Busy
        /\ \E f, g \in claim[t].files : Guard(claim[t], f) = "ok" /\ Guard(claim[t], g) # "ok"
\* The daemon down between two renames of one transaction.
NeverCrashBetweenRenames ==
    ~(~up /\ pending # {} /\ \E f \in Files : f \notin pending /\ pnew[f] = dver[f] /\ pnew[f] > 0
      /\ \E T \in hist : Multi(T) /\ f \in T.files /\ T.new[f] = pnew[f] /\ pending \subseteq T.files)
NeverRollForward == ~rolled
\* A snapshot taken with a whole multi-file transaction in it.
NeverCutAfterTxn ==
    ~(cut # NoTxn /\ \E T \in hist : Multi(T) /\ \A f \in T.files : cut[f] >= T.new[f])
=============================================================================
