---------------------- MODULE MultiHost_NoEpochCompare ----------------------
(* Mutant: the commit Txn without the epoch compare (commit_txn's          *)
(* epoch_compare).  A writer whose claim a reclaim on another host revoked *)
(* commits because the file key's revision never moved (G2).               *)
(* Expected: NoStaleApply violated.                                        *)
EXTENDS MultiHost

AnyEpoch(t) == TRUE

NextM ==
    \/ Core
    \/ \E w \in Writers, h \in Hosts : Open(w, h)
    \/ \E w \in Writers : Draft(w) \/ Resolve(w)
    \/ \E t \in inflight : ApplyWith(t, AnyEpoch, VersionCompare)
    \/ \E h \in Hosts : RollForward(h)
    \/ \E h \in Hosts, c \in drafts : Recover(h, c)

SpecM == Init /\ [][NextM]_vars
=============================================================================
