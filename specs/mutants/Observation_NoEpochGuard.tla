----------------------- MODULE Observation_NoEpochGuard -----------------------
(* Mutant: decide() without the EpochGuard, for handles and commit_path:    *)
(* an append or rewrite whose claim a reclaim revoked still lands.          *)
(* Expected: NoStaleApply violated.                                         *)
EXTENDS Observation

DecideNoEpoch(f, c) == IF ~VersionGuard(f, c) THEN "conflict" ELSE "ok"

NextM == \/ Other
         \/ \E i \in Ids, f \in Files, m \in Modes : OpenWrite(i, f, m)
         \/ \E i \in Ids : CommitWith(i, DecideNoEpoch, ObsAfterCommit, AppendedContent)
         \/ \E i \in Ids, f \in Files : CommitPath(i, f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
