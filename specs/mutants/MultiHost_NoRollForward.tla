---------------------- MODULE MultiHost_NoRollForward ----------------------
(* Mutant: nobody rolls a decided draft forward.  A host that died between *)
(* the decision and the rename leaves the record ahead of the file; the    *)
(* next writer rests on the record's version but reads (and builds on)    *)
(* the older installed content, and restart puts the decided draft away    *)
(* as abandoned, as a single host does.                                    *)
(* Expected: NoLostUpdate violated.                                        *)
EXTENDS MultiHost

NextM ==
    \/ Core
    \/ \E w \in Writers, h \in Hosts : OpenWith(w, h, TRUE)
    \/ \E w \in Writers : Draft(w) \/ Resolve(w)
    \/ \E t \in inflight : Apply(t)
    \/ \E h \in Hosts, c \in drafts : RecoverWith(h, c, FALSE, TRUE)

SpecM == Init /\ [][NextM]_vars
=============================================================================
