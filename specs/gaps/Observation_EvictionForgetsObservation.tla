---------------- MODULE Observation_EvictionForgetsObservation ----------------
(* GAP (core vs contract): the observation table is bounded               *)
(* (Coordinator.max_observations, least recently refreshed dropped first). *)
(* An identity whose observation was evicted still holds what it read, but *)
(* its next rewrite or rename-over is judged as a blind write, against the *)
(* version current at open/commit: i1 reads v0, i2 commits v1, i1's entry  *)
(* is evicted, i1 renames its v0-based copy over the file -> lands.        *)
(* Same mechanism as a crash (gaps/Observation_CrashForgetsObservations).  *)
(* A documented trade-off; an evicted identity could be treated as stale   *)
(* instead (e.g. keep a per-path "evicted since" version floor).           *)
(* Expected: NoLostUpdate violated.                                         *)
EXTENDS Observation

Evict(i, f) ==
    /\ obs[i][f] # None
    /\ obs' = [obs EXCEPT ![i][f] = None]
    /\ UNCHANGED <<up, ver, ep, content, know, h, last, appended, appendRefused>>

NextM == Next \/ \E i \in Ids, f \in Files : Evict(i, f)
SpecM == Init /\ [][NextM]_vars
=============================================================================
