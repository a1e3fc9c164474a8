--------------------- MODULE MultiHost_NoVersionCompare ---------------------
(* Mutant: the commit Txn without the mod_revision compare.  Two writers   *)
(* on two hosts resting on one version both commit (G1).                   *)
(* Expected: OneWinner violated.                                           *)
EXTENDS MultiHost

AnyRevision(t) == TRUE

NextM ==
    \/ Core
    \/ \E w \in Writers, h \in Hosts : Open(w, h)
    \/ \E w \in Writers : Draft(w) \/ Resolve(w)
    \/ \E t \in inflight : ApplyWith(t, EpochCompare, AnyRevision)
    \/ \E h \in Hosts : RollForward(h)
    \/ \E h \in Hosts, c \in drafts : Recover(h, c)

SpecM == Init /\ [][NextM]_vars
=============================================================================
