--------------------- MODULE Transactions_NoRollForward ---------------------
(* Mutant: recovery at mount ignores the intent record and puts every       *)
(* leftover draft away (roll back only).  A snapshot taken after the        *)
(* restart holds the renamed files new and the others old.                 *)
(* Expected: NoMixedCut violated.                                           *)
EXTENDS Transactions

NextM == \/ Other
         \/ \E t \in Txns : CommitMany(t)
         \/ RestartWith(FALSE)

SpecM == Init /\ [][NextM]_vars
=============================================================================
