---------------------- MODULE MultiHost_ResolveNoAbort ----------------------
(* Mutant: a lost reply is resolved by reading back only: "not applied"    *)
(* and the draft goes to rejected/, but the Txn, still in flight, applies  *)
(* afterwards.  etcd has decided a version whose bytes are gone (G6).      *)
(* Expected: DecidedRecoverable violated.                                  *)
EXTENDS MultiHost

NextM ==
    \/ Core
    \/ \E w \in Writers, h \in Hosts : Open(w, h)
    \/ \E w \in Writers : Draft(w) \/ ResolveWith(w, FALSE)
    \/ \E t \in inflight : Apply(t)
    \/ \E h \in Hosts : RollForward(h)
    \/ \E h \in Hosts, c \in drafts : Recover(h, c)

SpecM == Init /\ [][NextM]_vars
=============================================================================
