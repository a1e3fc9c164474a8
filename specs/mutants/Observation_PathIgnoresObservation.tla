----------------- MODULE Observation_PathIgnoresObservation -----------------
(* Mutant: commit_path (rename over the file) always writes blind, resting  *)
(* on the current version instead of the identity's observation.  The       *)
(* editor / sed -i / atomic-writer pattern then loses updates.              *)
(* Expected: NoLostUpdate violated.                                         *)
EXTENDS Observation

BlindBase(i, f) == [version |-> ver[f], epoch |-> ep[f], append |-> FALSE]

NextM == \/ Other
         \/ \E i \in Ids, f \in Files, m \in Modes : OpenWrite(i, f, m)
         \/ \E i \in Ids : Commit(i)
         \/ \E i \in Ids, f \in Files : CommitPathWith(i, f, BlindBase)

SpecM == Init /\ [][NextM]_vars
=============================================================================
