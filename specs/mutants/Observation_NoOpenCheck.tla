----------------------- MODULE Observation_NoOpenCheck -----------------------
(* Mutant: open_write(rewrite=True) without the open-time check of the      *)
(* identity's observation.  The claim rests on the version current at open, *)
(* so an O_TRUNC rewrite computed from an older read passes every later     *)
(* check: the check is load-bearing, not just an early error report.        *)
(* Expected: NoLostUpdate violated.                                         *)
EXTENDS Observation

NoCheck(i, f) == TRUE

NextM == \/ Other
         \/ \E i \in Ids, f \in Files, m \in Modes : OpenWriteWith(i, f, m, NoCheck)
         \/ \E i \in Ids : Commit(i)
         \/ \E i \in Ids, f \in Files : CommitPath(i, f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
