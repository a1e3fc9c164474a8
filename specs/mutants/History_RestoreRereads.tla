---------------------- MODULE History_RestoreRereads ----------------------
(* Mutant: the restore rests on the (version, epoch) current when it       *)
(* installs instead of the one the command read (a naive copy of           *)
(* .fencefs/versions/f/N over f).  A commit that landed after the read is  *)
(* overwritten without a conflict: its update is lost (G1).                *)
(* Expected: NoLostUpdate violated.                                        *)
EXTENDS History

DecideAtInstall(f, c) == Decide(f, [c EXCEPT !.version = ver[f], !.epoch = ep[f]])

RestoreRereads(w, n) == RestoreWith(w, n, DecideAtInstall)

SpecM == HInit /\ [][HNextWith(RestoreRereads)]_hvars
=============================================================================
