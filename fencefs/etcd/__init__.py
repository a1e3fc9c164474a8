"""Multi-host coordination through etcd (docs/multihost.md).

`client` speaks etcd's JSON gateway from trio; `keys` is the key layout and
the records' wire format; `coordination` builds the transactions (commit,
reclaim, exclusive takeover) and reads their outcomes; `localcluster` starts
a 3-member etcd on loopback for tests, demos and `scripts/etcd-cluster`.
"""
