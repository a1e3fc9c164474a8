----------------------- MODULE Leases_NoExclusiveGuard -----------------------
(* Mutant: open_write ignores the exclusive policy (no EBUSY, no takeover): *)
(* an exclusive file behaves as an optimistic one.                          *)
(* Expected: AtMostOneLiveWriter violated.                                  *)
EXTENDS Leases

OpenOptimistic(w, f) ==
    /\ claim[w] = NoClaim
    /\ claim' = [claim EXCEPT ![w] = NewClaim(f, ep[f])]
    /\ UNCHANGED <<ver, ep, last, tookOver, liveTaken>>

NextM == Other \/ \E w \in Writers, f \in Files : OpenOptimistic(w, f)
SpecM == Init /\ [][NextM]_vars
=============================================================================
