-------------------- MODULE Observation_AppendVersionGuard --------------------
(* Mutant: appends carry the VersionGuard too (decide() without the         *)
(* "not claim.append" exemption).  Nothing is lost, but concurrent appends  *)
(* get EAGAIN: the contract says appends always land, one after another.    *)
(* Expected: AppendsAlwaysLand violated.                                    *)
EXTENDS Observation

DecideAppendVersion(f, c) ==
    IF ~EpochGuard(f, c) THEN "fenced"
    ELSE IF c.version # ver[f] THEN "conflict"
    ELSE "ok"

NextM == \/ Other
         \/ \E i \in Ids, f \in Files, m \in Modes : OpenWrite(i, f, m)
         \/ \E i \in Ids : CommitWith(i, DecideAppendVersion, ObsAfterCommit, AppendedContent)
         \/ \E i \in Ids, f \in Files : CommitPath(i, f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
