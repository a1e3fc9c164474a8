--------------------- MODULE Leases_TakeoverIgnoresLease ---------------------
(* Mutant: no EBUSY: the next writer takes an exclusive file over (epoch+1) *)
(* even while the holder's lease is live.  Safe for the content (the holder *)
(* is fenced) but the holder loses a claim it was renewing.                 *)
(* Expected: LiveLeaseRespected violated.                                   *)
EXTENDS Leases

NeverBusyGuard(w, f) == FALSE

NextM == Other \/ \E w \in Writers, f \in Files : OpenWriteWith(w, f, NeverBusyGuard, EpochPlusOne)
SpecM == Init /\ [][NextM]_vars
=============================================================================
