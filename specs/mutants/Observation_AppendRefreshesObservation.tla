-------------- MODULE Observation_AppendRefreshesObservation --------------
(* MUTANT (was a gap, fixed in Coordinator.commit): moving the identity's  *)
(* observation to the new version after EVERY commit, appends included:    *)
(*     seen = file.readers.get(claim.identity)                              *)
(*     if seen is not None: seen.version, seen.epoch = new_version, ...     *)
(* An append does not rest on the version it lands on, so after            *)
(*   i1 reads v0; i2 rewrites -> v1; i1 appends -> v2 (seen := v2);         *)
(*   i1 rewrites (O_TRUNC) from its v0 copy -> open check passes -> v3      *)
(* i2's update is lost.  Fix: advance only if the claim is not an append   *)
(* or seen was at the version replaced (Observation.ObsAfterCommit).       *)
(* Expected: NoLostUpdate violated.                                         *)
EXTENDS Observation

CoreObsAfterCommit(i, f, c) ==
    IF obs[i][f] # None THEN [version |-> ver[f] + 1, epoch |-> ep[f]]
    ELSE obs[i][f]

NextM == \/ Other
         \/ \E i \in Ids, f \in Files, m \in Modes : OpenWrite(i, f, m)
         \/ \E i \in Ids : CommitWith(i, Decide, CoreObsAfterCommit, AppendedContent)
         \/ \E i \in Ids, f \in Files : CommitPath(i, f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
