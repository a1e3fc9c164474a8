-------------------- MODULE MultiHost_InstallBeforeDecide --------------------
(* Mutant: the draft is renamed into place before the Txn decides (the     *)
(* single-host order: check, install, then tell etcd).  A reader on any    *)
(* host sees content that etcd may still refuse (G4).                      *)
(* Expected: OnlyDecidedVisible violated.                                  *)
EXTENDS MultiHost

InstallFirst(w) ==
    /\ pc[w] = "open" /\ up[HostOf(w)] /\ nextc <= MaxDrafts
    /\ file' = [v |-> claim[w].v + 1, c |-> nextc]
    /\ dvers' = [dvers EXCEPT ![nextc] = claim[w].v + 1]
    /\ claim' = [claim EXCEPT ![w].c = nextc]
    /\ nextc' = nextc + 1
    /\ pc' = [pc EXCEPT ![w] = "drafted"]
    /\ UNCHANGED <<rec, krev, epoch, hold, held, drafts, up, inflight, hist, rolled, crashes>>

NextM ==
    \/ Core
    \/ \E w \in Writers, h \in Hosts : Open(w, h)
    \/ \E w \in Writers : InstallFirst(w) \/ Resolve(w)
    \/ \E t \in inflight : Apply(t)
    \/ \E h \in Hosts : RollForward(h)
    \/ \E h \in Hosts, c \in drafts : Recover(h, c)

SpecM == Init /\ [][NextM]_vars
=============================================================================
