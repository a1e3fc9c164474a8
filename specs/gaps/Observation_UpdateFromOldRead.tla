------------------- MODULE Observation_UpdateFromOldRead -------------------
(* GAP (core vs contract): a program reads the file (v0), later opens it    *)
(* WITHOUT O_TRUNC (open(f, "r+"), O_WRONLY) and writes bytes computed from *)
(* its old read, without reading through the new handle.  open_write        *)
(* (rewrite=False) rests the claim on the version current at open and never *)
(* looks at the identity's observation, so the write lands over v1.  The    *)
(* contract says every later commit of the identity rests on what it read. *)
(* Expected: NoLostUpdate violated.                                         *)
EXTENDS Observation

OpenUpdateFromOldRead(i, f) ==
    /\ up
    /\ h[i] = None
    /\ know[i][f] # None
    /\ h' = [h EXCEPT ![i] = Handle(f, "update", know[i][f].version,
                                    know[i][f].appends, TRUE)]
    /\ UNCHANGED <<up, ver, ep, content, obs, know, last, appended, appendRefused>>

NextM == \/ Next
         \/ \E i \in Ids, f \in Files : OpenUpdateFromOldRead(i, f)

SpecM == Init /\ [][NextM]_vars
=============================================================================
