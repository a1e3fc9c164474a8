--------------------- MODULE MultiHostTxn_NoRollForward ---------------------
(* Mutant: no host rolls another's decided transaction forward, and opens   *)
(* take the record's version whatever the file holds.  A host that died     *)
(* between the decision and its renames leaves members behind the record;   *)
(* the next transaction rests on the record's version but builds on the     *)
(* older content.  Expected: NoLostUpdate violated.                         *)
EXTENDS MultiHostTxn

NextM ==
    \/ Core
    \/ \E t \in Txns, h \in Hosts, S \in SUBSET Files : OpenWith(t, h, S, LAMBDA f : TRUE)
    \/ \E t \in Txns : Decide(t)

SpecM == Init /\ [][NextM]_vars
=============================================================================
