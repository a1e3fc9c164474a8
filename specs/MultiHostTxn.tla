---------------------------- MODULE MultiHostTxn ----------------------------
(***************************************************************************)
(* Multi-file commits across hosts (G9 with --etcd): the multi-file        *)
(* commit of Transactions.tla decided the way MultiHost.tla decides one    *)
(* file.  Mirrors fencefs/etcd/txns.py.                                    *)
(*                                                                         *)
(* etcd (each etcd action is one linearizable step):                       *)
(*   recv[f]  the version in the file record /<c>/f/PATH                   *)
(*   krev[f]  its mod_revision (any put moves it)                          *)
(*   ep[f]    /<c>/e/PATH                                                  *)
(*   intents  the intent keys /<c>/t/TXN: the transactions decided and     *)
(*            not yet known to be installed                                *)
(* shared storage:                                                         *)
(*   dv[f]    the installed file's version (its state attribute travels    *)
(*            with the content)                                            *)
(*   drafts   decided drafts still in .fencefs/drafts/: [t, f, v]          *)
(*                                                                         *)
(* A transaction t on host h: Open (rests on every member's record, after  *)
(* the member was rolled forward: what it reads IS the record's version),  *)
(* Decide (ONE etcd transaction: per member the epoch compare and the      *)
(* mod_revision compare; on success every record and the intent are put),  *)
(* InstallOne per member (a rename; a crash can come between two), Finish  *)
(* (the intent key is deleted once every draft is installed).  Any host    *)
(* rolls an intent forward at any time (RollOne, ClearIntent: the upkeep's *)
(* sweep, an open of a member, the deciding host's restart); renames are   *)
(* idempotent, so the deciding host and a rolling host may race.           *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets, TLC

CONSTANTS Hosts, Files, Txns, NoClaim, MaxVersion, MaxEpoch,
          MaxCrashes   \* host crashes per behaviour (each can hit any step)

VARIABLES recv, krev, ep, intents, dv, drafts, up, pc, claim, hist, rolled, crashes

vars == <<recv, krev, ep, intents, dv, drafts, up, pc, claim, hist, rolled, crashes>>

Init ==
    /\ recv = [f \in Files |-> 0] /\ krev = [f \in Files |-> 0]
    /\ ep = [f \in Files |-> 0]
    /\ intents = {}
    /\ dv = [f \in Files |-> 0]
    /\ drafts = {}
    /\ up = [h \in Hosts |-> TRUE]
    /\ pc = [t \in Txns |-> "idle"]
    /\ claim = [t \in Txns |-> NoClaim]
    /\ hist = {}
    /\ rolled = FALSE
    /\ crashes = 0

Pending(f) == \E d \in drafts : d.f = f

(* Open: every member rests on its record; the host rolled it forward      *)
(* first (RollGuard), so the content read is the record's version.         *)
OpenWith(t, h, S, RollGuard(_)) ==
    /\ up[h] /\ pc[t] = "idle" /\ S # {}
    /\ t \notin intents   \* one transaction id per decision (the implementation's are fresh)
    /\ \A f \in S : RollGuard(f)
    /\ claim' = [claim EXCEPT ![t] = [host |-> h, files |-> S,
                                       ver |-> [f \in S |-> recv[f]],
                                       rev |-> [f \in S |-> krev[f]],
                                       ep |-> [f \in S |-> ep[f]],
                                       read |-> [f \in S |-> dv[f]]]]
    /\ pc' = [pc EXCEPT ![t] = "open"]
    /\ UNCHANGED <<recv, krev, ep, intents, dv, drafts, up, hist, rolled, crashes>>

Open(t, h, S) == OpenWith(t, h, S, LAMBDA f : dv[f] = recv[f])

(* The compares of many_txn() for one member. *)
MemberOk(c, f) == ep[f] = c.ep[f] /\ krev[f] = c.rev[f]

(* Decide: one etcd step.  Judged(c) is the set of members compared. *)
DecideWith(t, Judged(_)) ==
    LET c == claim[t] IN
    /\ pc[t] = "open" /\ up[c.host]
    /\ IF \A f \in Judged(c) : MemberOk(c, f)
       THEN /\ recv' = [f \in Files |-> IF f \in c.files THEN c.ver[f] + 1 ELSE recv[f]]
            /\ krev' = [f \in Files |-> IF f \in c.files THEN krev[f] + 1 ELSE krev[f]]
            /\ intents' = intents \cup {t}
            /\ drafts' = drafts \cup {[t |-> t, f |-> f, v |-> c.ver[f] + 1] : f \in c.files}
            \* the record keeps what the invariants judge: the versions it
            \* made, whether each member replaced the version it rests on and
            \* was built on that content, whether each epoch was current
            /\ hist' = hist \cup {[t |-> t, files |-> c.files,
                                   new |-> [f \in c.files |-> c.ver[f] + 1],
                                   fresh |-> \A f \in c.files :
                                                recv[f] = c.ver[f] /\ c.read[f] = c.ver[f],
                                   current |-> \A f \in c.files : c.ep[f] = ep[f]]}
            /\ pc' = [pc EXCEPT ![t] = "decided"]
            /\ UNCHANGED claim
       ELSE /\ pc' = [pc EXCEPT ![t] = "idle"]
            /\ claim' = [claim EXCEPT ![t] = NoClaim]
            /\ UNCHANGED <<recv, krev, intents, drafts, hist>>
    /\ UNCHANGED <<ep, dv, up, rolled, crashes>>

Decide(t) == DecideWith(t, LAMBDA c : c.files)

(* One rename of a decided draft (by its host, or by any host rolling). *)
Rename(d) ==
    /\ dv' = [dv EXCEPT ![d.f] = d.v]
    /\ drafts' = drafts \ {d}

InstallOne(t, d) ==
    /\ pc[t] = "decided" /\ up[claim[t].host]
    /\ d \in drafts /\ d.t = t
    /\ Rename(d)
    /\ UNCHANGED <<recv, krev, ep, intents, up, pc, claim, hist, rolled, crashes>>

(* Every rename done: the intent key is deleted, close() returns. *)
Finish(t) ==
    /\ pc[t] = "decided" /\ up[claim[t].host]
    /\ ~\E d \in drafts : d.t = t
    /\ intents' = intents \ {t}
    /\ pc' = [pc EXCEPT ![t] = "idle"]
    /\ claim' = [claim EXCEPT ![t] = NoClaim]
    /\ UNCHANGED <<recv, krev, ep, dv, drafts, up, hist, rolled, crashes>>

(* Any host rolls a decided transaction forward, one rename at a time. *)
RollOne(h, d) ==
    /\ up[h] /\ d \in drafts /\ d.t \in intents
    /\ Rename(d)
    /\ rolled' = TRUE
    /\ UNCHANGED <<recv, krev, ep, intents, up, pc, claim, hist, crashes>>

ClearIntent(h, t) ==
    /\ up[h] /\ t \in intents
    /\ ~\E d \in drafts : d.t = t
    /\ intents' = intents \ {t}
    /\ UNCHANGED <<recv, krev, ep, dv, drafts, up, pc, claim, hist, rolled, crashes>>

Reclaim(f) ==
    /\ ep[f] < MaxEpoch
    /\ ep' = [ep EXCEPT ![f] = ep[f] + 1]
    /\ UNCHANGED <<recv, krev, intents, dv, drafts, up, pc, claim, hist, rolled, crashes>>

(* A host dies at any step: its transactions vanish; drafts, intents stay. *)
Crash(h) ==
    /\ up[h] /\ crashes < MaxCrashes
    /\ crashes' = crashes + 1
    /\ up' = [up EXCEPT ![h] = FALSE]
    /\ pc' = [t \in Txns |-> IF pc[t] # "idle" /\ claim[t].host = h THEN "idle" ELSE pc[t]]
    /\ claim' = [t \in Txns |-> IF pc[t] # "idle" /\ claim[t].host = h THEN NoClaim
                                ELSE claim[t]]
    /\ UNCHANGED <<recv, krev, ep, intents, dv, drafts, hist, rolled>>

Restart(h) ==
    /\ ~up[h]
    /\ up' = [up EXCEPT ![h] = TRUE]
    /\ UNCHANGED <<recv, krev, ep, intents, dv, drafts, pc, claim, hist, rolled, crashes>>

Core ==
    \/ \E t \in Txns : Finish(t) \/ \E d \in drafts : InstallOne(t, d)
    \/ \E f \in Files : Reclaim(f)
    \/ \E h \in Hosts : Crash(h) \/ Restart(h)
    \/ \E h \in Hosts, t \in intents : ClearIntent(h, t)

Next ==
    \/ Core
    \/ \E t \in Txns, h \in Hosts, S \in SUBSET Files : Open(t, h, S)
    \/ \E t \in Txns : Decide(t)
    \/ \E h \in Hosts, d \in drafts : RollOne(h, d)

Spec == Init /\ [][Next]_vars

Bounds == \A f \in Files : recv[f] <= MaxVersion

\* Hosts are interchangeable, and so are transactions (SYMMETRY in the .cfg).
Symmetry == Permutations(Hosts) \cup Permutations(Txns)

(***************************************************************************)
(* Invariants                                                              *)
(***************************************************************************)
TypeOK ==
    /\ pc \in [Txns -> {"idle", "open", "decided"}]
    /\ intents \subseteq Txns
    /\ \A t \in Txns : (pc[t] = "idle") <=> (claim[t] = NoClaim)

(* G1 per member: each decision replaces the version it rests on, and is   *)
(* built on that version's content (not an older one the file still held). *)
NoLostUpdate == \A T \in hist : T.fresh
OneWinner ==
    \A T, U \in hist : \A f \in T.files \cap U.files : T.new[f] = U.new[f] => T = U

(* G2 per member: nothing decided under a superseded epoch. *)
NoStaleApply == \A T \in hist : T.current

(* G4: no file ever shows a version etcd did not decide. *)
OnlyDecidedVisible == \A f \in Files : dv[f] <= recv[f]

(* G6: a decided version is installed, or its draft is there to roll. *)
DecidedRecoverable ==
    \A f \in Files : dv[f] = recv[f] \/ \E d \in drafts : d.f = f /\ d.v = recv[f]

(* G9: a transaction whose intent is gone has landed in every member.     *)
Landed(T, f) == dv[f] >= T.new[f]
AllOrNothing ==
    \A T \in hist : T.t \notin intents => \A f \in T.files : Landed(T, f)

(* The intent outlives every draft it names (the upkeep can find them). *)
IntentCoversDrafts == \A d \in drafts : d.t \in intents

(***************************************************************************)
(* Reachability: each must be VIOLATED (specs/reach/MultiHostTxn_reach_X)  *)
(***************************************************************************)
NeverMultiCommit ==
    ~\E T \in hist : Cardinality(T.files) >= 2 /\ T.t \notin intents
NeverRollForward == ~rolled
NeverRefused == \A t \in Txns : pc[t] = "open" =>
                    \A f \in claim[t].files : MemberOk(claim[t], f)
=============================================================================
