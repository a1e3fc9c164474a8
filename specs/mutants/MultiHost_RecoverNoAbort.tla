--------------------- MODULE MultiHost_RecoverNoAbort ---------------------
(* Mutant: a restarted host puts away its orphaned drafts without first    *)
(* moving the file key's revision; a Txn it sent before the crash applies  *)
(* afterwards and names a draft that is gone (G6).                         *)
(* Expected: DecidedRecoverable violated.                                  *)
EXTENDS MultiHost

NextM ==
    \/ Core
    \/ \E w \in Writers, h \in Hosts : Open(w, h)
    \/ \E w \in Writers : Draft(w) \/ Resolve(w)
    \/ \E t \in inflight : Apply(t)
    \/ \E h \in Hosts : RollForward(h)
    \/ \E h \in Hosts, c \in drafts : RecoverWith(h, c, TRUE, FALSE)

SpecM == Init /\ [][NextM]_vars
=============================================================================
