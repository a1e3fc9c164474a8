----------------------- MODULE Fencing_NoVersionGuard -----------------------
(* Mutant: decide() without the VersionGuard.  Two writers that rest on    *)
(* the same version both commit: the first one's update is lost (G1).      *)
(* Expected: NoLostUpdate violated.                                        *)
EXTENDS Fencing

DecideNoVersionGuard(f, c) == IF ~EpochGuard(f, c) THEN "fenced" ELSE "ok"

NextM == \/ Other
         \/ \E w \in Writers : CommitWith(w, DecideNoVersionGuard)
         \/ \E f \in Files : Reclaim(f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
