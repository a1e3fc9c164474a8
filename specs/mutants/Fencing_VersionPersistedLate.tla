-------------------- MODULE Fencing_VersionPersistedLate --------------------
(* Mutant: a commit installs the content and bumps the in-memory version,  *)
(* but the version reaches the disk in a later step (a separate xattr      *)
(* write instead of a draft that already carries it).  A crash in between  *)
(* pairs new bytes with the old version; restart re-adopts the old one.    *)
(* Expected: VersionMonotonic (action property) violated.                  *)
EXTENDS Fencing

CommitLate(w) ==
    LET c == claim[w] IN
    /\ up
    /\ c # NoClaim
    /\ LET f == c.file IN
       IF Decide(f, c) = "ok"
       THEN /\ ver' = [ver EXCEPT ![f] = ver[f] + 1]   \* dver not yet
            /\ claim' = [claim EXCEPT ![w].version = ver[f] + 1]
            /\ hist' = hist \cup {[file |-> f,
                                   base |-> c.version, new |-> ver[f] + 1,
                                   epoch |-> c.epoch, current |-> ep[f]]}
            /\ UNCHANGED <<up, ep, dver, dep, restarted>>
       ELSE /\ claim' = [claim EXCEPT ![w] = NoClaim]
            /\ UNCHANGED <<up, ver, ep, dver, dep, hist, restarted>>

PersistVersion(f) ==
    /\ up
    /\ dver[f] < ver[f]
    /\ dver' = [dver EXCEPT ![f] = ver[f]]
    /\ dep' = [dep EXCEPT ![f] = ep[f]]
    /\ UNCHANGED <<up, ver, ep, claim, hist, restarted>>

NextM == \/ Other
         \/ \E w \in Writers : CommitLate(w)
         \/ \E f \in Files : Reclaim(f) \/ PersistVersion(f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
