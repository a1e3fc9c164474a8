------------------ MODULE Fencing_ForeignReplaceResetsState ------------------
(* GAP (store vs contract): version and epoch live only in the state       *)
(* attribute of the backing file (fencefs/store/backing.py).  A foreign     *)
(* write that REPLACES the backing file (mv, an editor's rename, rsync)     *)
(* while the daemon is down drops that attribute; read_state then returns   *)
(* Persisted(0, 0) and restart adopts version 0, epoch 0.  The same happens *)
(* without a crash once Coordinator.forget has dropped the in-memory state. *)
(* The contract: the epoch "never goes down, not even across a crash".      *)
(* A per-path record outside the file (e.g. under .fencefs/) would fix it.  *)
(* Expected: EpochMonotonic (action property) violated.                     *)
EXTENDS Fencing

ForeignReplace(f) ==
    /\ ~up
    /\ dver' = [dver EXCEPT ![f] = 0]
    /\ dep' = [dep EXCEPT ![f] = 0]
    /\ UNCHANGED <<up, ver, ep, claim, hist, restarted>>

NextM == Next \/ \E f \in Files : ForeignReplace(f)
SpecM == Init /\ [][NextM]_vars
=============================================================================
