--------------------- MODULE Observation_AppendDraftCopy ---------------------
(* Mutant: appends skip the VersionGuard (correctly) but the install        *)
(* renames the handle's draft, a copy of the file taken at open plus the    *)
(* appended bytes, over the file, instead of appending the new bytes to the *)
(* content current at commit.  Whatever landed in between is lost.          *)
(* Expected: AppendsNeverLost violated.                                     *)
EXTENDS Observation

DraftCopy(f, c) == c.data \cup {ver[f] + 1}

NextM == \/ Other
         \/ \E i \in Ids, f \in Files, m \in Modes : OpenWrite(i, f, m)
         \/ \E i \in Ids : CommitWith(i, Decide, ObsAfterCommit, DraftCopy)
         \/ \E i \in Ids, f \in Files : CommitPath(i, f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
