------------------------ MODULE Fencing_NoEpochGuard ------------------------
(* Mutant: decide() without the EpochGuard.  A zombie whose claim was      *)
(* revoked by a reclaim commits because the version never moved (G2).      *)
(* Expected: NoStaleApply violated.                                        *)
EXTENDS Fencing

DecideNoEpochGuard(f, c) == IF ~VersionGuard(f, c) THEN "conflict" ELSE "ok"

NextM == \/ Other
         \/ \E w \in Writers : CommitWith(w, DecideNoEpochGuard)
         \/ \E f \in Files : Reclaim(f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
