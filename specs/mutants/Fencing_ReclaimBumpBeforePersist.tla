------------------ MODULE Fencing_ReclaimBumpBeforePersist ------------------
(* Mutant: Coordinator.reclaim bumps the in-memory epoch first and         *)
(* persists it afterwards (or lazily).  Anything that saw the new epoch    *)
(* (a claim, getfattr, the setfattr that returned) sees it go down again   *)
(* when a crash falls in between: restart re-adopts the old epoch.         *)
(* Expected: EpochMonotonic (action property) violated.                    *)
EXTENDS Fencing

ReclaimBump(f) ==
    /\ up
    /\ dep[f] = ep[f]                        \* no reclaim half-done on f
    /\ ep' = [ep EXCEPT ![f] = ep[f] + 1]    \* in memory first ...
    /\ UNCHANGED <<up, ver, dver, dep, claim, hist, restarted>>

ReclaimPersist(f) ==
    /\ up
    /\ dep[f] < ep[f]
    /\ dep' = [dep EXCEPT ![f] = ep[f]]      \* ... persisted later
    /\ UNCHANGED <<up, ver, ep, dver, claim, hist, restarted>>

NextM == \/ Other
         \/ \E w \in Writers : Commit(w)
         \/ \E f \in Files : ReclaimBump(f) \/ ReclaimPersist(f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
