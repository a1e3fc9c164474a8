------------------- MODULE MultiHostTxn_FirstCompareOnly -------------------
(* Mutant: the etcd transaction compares only the first member's epoch and *)
(* revision (FENCEFS_TEST_TXN_FIRST_COMPARE_ONLY=1 in fencefs/etcd/txns.py).*)
(* A transaction whose second file moved since it was opened lands over it: *)
(* a lost update on that file (G1).  Expected: NoLostUpdate violated.       *)
EXTENDS MultiHostTxn

First(c) == {CHOOSE f \in c.files : TRUE}

NextM ==
    \/ Core
    \/ \E t \in Txns, h \in Hosts, S \in SUBSET Files : Open(t, h, S)
    \/ \E t \in Txns : DecideWith(t, First)
    \/ \E h \in Hosts, d \in drafts : RollOne(h, d)

SpecM == Init /\ [][NextM]_vars
=============================================================================
