------------------------ MODULE Transactions_NoIntent ------------------------
(* Mutant: the renames start without a durable intent record.  A crash      *)
(* between two renames leaves drafts that the next mount cannot tell from   *)
(* abandoned writes: it puts them away, and the files already renamed stay  *)
(* new.  Expected: AllOrNothing violated.                                    *)
EXTENDS Transactions

NextM == \/ Other
         \/ \E t \in Txns : CommitManyWith(t, DecideAll, FALSE)
         \/ Restart

SpecM == Init /\ [][NextM]_vars
=============================================================================
