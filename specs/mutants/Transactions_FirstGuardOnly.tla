--------------------- MODULE Transactions_FirstGuardOnly ---------------------
(* Mutant: decide_many checks only the first member's guard.  A             *)
(* transaction whose second file moved since it was read lands over it:    *)
(* a lost update on that file (G1).  Expected: NoLostUpdate violated.       *)
EXTENDS Transactions

DecideFirstOnly(c) == LET f == CHOOSE x \in c.files : TRUE IN Guard(c, f) = "ok"

NextM == \/ Other
         \/ \E t \in Txns : CommitManyWith(t, DecideFirstOnly, TRUE)
         \/ Restart

SpecM == Init /\ [][NextM]_vars
=============================================================================
