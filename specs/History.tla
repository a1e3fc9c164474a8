------------------------------ MODULE History ------------------------------
(***************************************************************************)
(* Restore of a retained version (fencefs restore, issue 15).              *)
(*                                                                         *)
(* History adds no guard: keeping the replaced content is a hard link made *)
(* inside the commit's atomic step and changes no version or epoch.  But a *)
(* restore is a commit: the command reads the file's (version, epoch)      *)
(* (user.fencefs.history "current") and asks the daemon to commit version  *)
(* n's bytes resting on exactly that.  Here the read is OpenWrite (the     *)
(* claim rests on what was read) and the restore is CommitWith under the   *)
(* same Decide as every commit, so a commit or reclaim landing between the *)
(* read and the restore refuses it (EAGAIN / ESTALE), and every invariant  *)
(* of Fencing (NoLostUpdate, OneWinner, NoStaleApply) covers restores.     *)
(*                                                                         *)
(* The mutant History_RestoreRereads rests the restore on the state found *)
(* when it installs (what a naive `cp .fencefs/versions/f/N f` would do):  *)
(* a commit landing in between is silently overwritten.                    *)
(***************************************************************************)
EXTENDS Fencing

VARIABLE restores   \* history: one record per restore that landed

hvars == <<vars, restores>>

HInit == Init /\ restores = {}

\* Restore version n (a version the file had before: n < its current
\* version; retention may have dropped others, which is ENOENT, no change).
RestoreWith(w, n, D(_, _)) ==
    LET c == claim[w] IN
    /\ c # NoClaim
    /\ n < ver[c.file]
    /\ CommitWith(w, D)
    /\ restores' = IF D(c.file, c) = "ok"
                   THEN restores \cup {[file |-> c.file, from |-> n,
                                        base |-> c.version, new |-> ver[c.file] + 1]}
                   ELSE restores

Restore(w, n) == RestoreWith(w, n, Decide)

HNextWith(R(_, _)) ==
    \/ Next /\ UNCHANGED restores
    \/ \E w \in Writers, n \in 0..MaxVersion : R(w, n)

HNext == HNextWith(Restore)

HSpec == HInit /\ [][HNext]_hvars

\* A restore rests on the version it read, and that version was current.
RestoreRestsOnRead == \A r \in restores : r.new = r.base + 1 /\ r.from < r.new

\* Reachability (must be violated: reach/History_reach_*.cfg).
NeverRestore == restores = {}
=============================================================================
