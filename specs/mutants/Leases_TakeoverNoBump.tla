------------------------ MODULE Leases_TakeoverNoBump ------------------------
(* Mutant: when a lease has expired, the next writer takes the file over    *)
(* WITHOUT bumping the epoch.  The old holder's claim stays valid: it wakes *)
(* up, renews, and commits: the zombie writer of the contract.              *)
(* Expected: ReclaimedHolderNeverCommits violated.                          *)
EXTENDS Leases

SameEpoch(f) == ep[f]

NextM == Other \/ \E w \in Writers, f \in Files : OpenWriteWith(w, f, Busy, SameEpoch)
SpecM == Init /\ [][NextM]_vars
=============================================================================
